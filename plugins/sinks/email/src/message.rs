//! The message itself: RFC 5322 headers, RFC 2047 subject, base64 body.

use qu_sdk::Event;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A plausible address: one `@`, no spaces or angle brackets.
pub fn is_address(text: &str) -> bool {
    let mut parts = text.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else { return false };
    !local.is_empty() && !domain.is_empty() && !text.chars().any(|c| c.is_whitespace() || "<>,;\"".contains(c))
}

/// An RFC 2047 encoded word when the text is not plain ASCII.
fn encode_header(text: &str) -> String {
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.is_ascii() {
        return text;
    }
    // Encoded words are at most 75 characters: split the UTF-8 text at
    // character boundaries into chunks of 45 bytes (60 base64 characters).
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
    }
    words.join("\r\n ")
}

/// `Tue, 24 Nov 2026 10:00:00 +0000` from milliseconds since the epoch.
pub fn rfc5322_date(millis: u64) -> String {
    let secs = (millis / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(month - 1) as usize];
    format!("{weekday}, {day:02} {name} {year} {:02}:{:02}:{:02} +0000", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The whole message, CRLF line endings, without the final `.`.
pub fn render(event: &Event, from: &str, to: &[String], host: &str) -> String {
    let id: String =
        event.idempotency_key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    let domain = from.rsplit('@').next().unwrap_or(host);
    let mut body = base64(event.body.as_bytes());
    let mut wrapped = String::with_capacity(body.len() + body.len() / 76 * 2);
    while body.len() > 76 {
        let rest = body.split_off(76);
        wrapped.push_str(&body);
        wrapped.push_str("\r\n");
        body = rest;
    }
    wrapped.push_str(&body);
    format!(
        "Date: {}\r\nFrom: {from}\r\nTo: {}\r\nSubject: {}\r\nMessage-ID: <{id}@{domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\nX-Qu-Idempotency-Key: {}\r\n\r\n{wrapped}\r\n",
        rfc5322_date(event.timestamp_ms),
        to.join(", "),
        encode_header(&event.subject),
        event.idempotency_key,
    )
}

/// SMTP transparency (RFC 5321 4.5.2): a line starting with `.` gets another.
pub fn dot_stuff(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_encoded_words() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
        assert_eq!(encode_header("DOWN web"), "DOWN web");
        assert_eq!(encode_header("DOWN café"), "=?UTF-8?B?RE9XTiBjYWbDqQ==?=");
    }

    #[test]
    fn dates_and_dots() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_611_600_000), "Wed, 25 Nov 2026 13:00:00 +0000");
        assert_eq!(dot_stuff("a\r\n.b\r\n"), "a\r\n..b\r\n");
        assert!(is_address("ops@example.com"));
        assert!(!is_address("ops example.com"));
        assert!(!is_address("a@b@c"));
    }
}
