//! The DNS wire format, as much as the check needs (RFC 1035, 3596).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A,
    Ns,
    Cname,
    Mx,
    Txt,
    Aaaa,
    Other(u16),
}

impl RecordType {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.to_ascii_uppercase().as_str() {
            "A" => Self::A,
            "AAAA" => Self::Aaaa,
            "CNAME" => Self::Cname,
            "MX" => Self::Mx,
            "TXT" => Self::Txt,
            "NS" => Self::Ns,
            _ => return None,
        })
    }

    fn code(self) -> u16 {
        match self {
            Self::A => 1,
            Self::Ns => 2,
            Self::Cname => 5,
            Self::Mx => 15,
            Self::Txt => 16,
            Self::Aaaa => 28,
            Self::Other(c) => c,
        }
    }

    fn from_code(code: u16) -> Self {
        match code {
            1 => Self::A,
            2 => Self::Ns,
            5 => Self::Cname,
            15 => Self::Mx,
            16 => Self::Txt,
            28 => Self::Aaaa,
            c => Self::Other(c),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::A => "A".into(),
            Self::Ns => "NS".into(),
            Self::Cname => "CNAME".into(),
            Self::Mx => "MX".into(),
            Self::Txt => "TXT".into(),
            Self::Aaaa => "AAAA".into(),
            Self::Other(c) => format!("TYPE{c}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub owner: String,
    pub kind: RecordType,
    /// Presentation form: `192.0.2.1`, `10 mail.example.com`, the text.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub rcode: u8,
    pub truncated: bool,
    pub answers: Vec<Answer>,
}

/// Encodes a name as labels; refuses what no resolver would accept.
pub fn encode_name(name: &str) -> Result<Vec<u8>, String> {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err("the target must be a DNS name, e.g. example.com".into());
    }
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("`{name}` is not a valid DNS name (labels are 1 to 63 characters)"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("`{name}` is not a valid DNS name (letters, digits, `-` and `_` only)"));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() > 255 {
        return Err(format!("`{name}` is longer than 255 bytes"));
    }
    Ok(out)
}

/// A recursive query for `name`/`record`.
pub fn query(id: u16, name: &str, record: RecordType) -> Result<Vec<u8>, String> {
    let mut packet = Vec::with_capacity(32 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // RD
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    packet.extend_from_slice(&encode_name(name)?);
    packet.extend_from_slice(&record.code().to_be_bytes());
    packet.extend_from_slice(&[0, 1]); // IN
    Ok(packet)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.at).ok_or("response cut short")?;
        self.at += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let slice = self.bytes.get(self.at..self.at + n).ok_or("response cut short")?;
        self.at += n;
        Ok(slice)
    }

    /// A possibly compressed name starting at the cursor.
    fn name(&mut self) -> Result<String, String> {
        let (name, end) = read_name(self.bytes, self.at)?;
        self.at = end;
        Ok(name)
    }
}

/// Reads a name at `at`; returns it and where the record continues.
fn read_name(bytes: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *bytes.get(at).ok_or("name cut short")? as usize;
        if len & 0xC0 == 0xC0 {
            let low = *bytes.get(at + 1).ok_or("name cut short")? as usize;
            end.get_or_insert(at + 2);
            at = ((len & 0x3F) << 8) | low;
            continue;
        }
        if len == 0 {
            let name = if labels.is_empty() { ".".to_string() } else { labels.join(".") };
            return Ok((name, end.unwrap_or(at + 1)));
        }
        let label = bytes.get(at + 1..at + 1 + len).ok_or("name cut short")?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + len;
    }
    Err("name compression loops".into())
}

/// Parses a response to the query with `id`.
pub fn parse(bytes: &[u8], id: u16) -> Result<Response, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.u16()? != id {
        return Err("response to another query (id mismatch)".into());
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err("not a response".into());
    }
    let questions = r.u16()?;
    let answers = r.u16()?;
    r.u16()?;
    r.u16()?;
    for _ in 0..questions {
        r.name()?;
        r.take(4)?;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        let owner = r.name()?;
        let kind = RecordType::from_code(r.u16()?);
        r.u16()?; // class
        r.take(4)?; // ttl
        let length = r.u16()? as usize;
        let start = r.at;
        let data = r.take(length)?;
        let value = match kind {
            RecordType::A if length == 4 => std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string(),
            RecordType::Aaaa if length == 16 => {
                let octets: [u8; 16] = data.try_into().map_err(|_| "bad AAAA")?;
                std::net::Ipv6Addr::from(octets).to_string()
            }
            RecordType::Cname | RecordType::Ns => read_name(bytes, start)?.0,
            RecordType::Mx if length >= 3 => {
                let preference = u16::from_be_bytes([data[0], data[1]]);
                format!("{preference} {}", read_name(bytes, start + 2)?.0)
            }
            RecordType::Txt => {
                let mut text = String::new();
                let mut i = 0;
                while i < data.len() {
                    let n = data[i] as usize;
                    let chunk = data.get(i + 1..i + 1 + n).ok_or("TXT cut short")?;
                    text.push_str(&String::from_utf8_lossy(chunk));
                    i += 1 + n;
                }
                text
            }
            _ => format!("{} bytes", data.len()),
        };
        out.push(Answer { owner, kind, value });
    }
    Ok(Response { rcode: (flags & 0x000F) as u8, truncated: flags & 0x0200 != 0, answers: out })
}

/// Names compare without case and without the trailing dot.
pub fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_compression() {
        let q = query(7, "www.example.com", RecordType::Cname).unwrap();
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 2; // two answers
        // www.example.com CNAME example.com (pointer to offset 16)
        r.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 16]);
        // example.com A 192.0.2.1
        r.extend_from_slice(&[0xC0, 16, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        let parsed = parse(&r, 7).unwrap();
        assert_eq!(parsed.answers[0].value, "example.com");
        assert_eq!(parsed.answers[0].owner, "www.example.com");
        assert_eq!(parsed.answers[1].value, "192.0.2.1");
        assert!(parse(&r, 8).is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(encode_name("").is_err());
        assert!(encode_name("a..b").is_err());
        assert!(encode_name("exa mple.com").is_err());
        assert!(encode_name(&"a".repeat(64)).is_err());
        assert_eq!(encode_name("a.b.").unwrap(), vec![1, b'a', 1, b'b', 0]);
    }

    /// The committed fuzz corpus (`tests/fuzz/corpus/dns_wire`: the first
    /// two bytes are the query id) parses without a panic.
    #[test]
    fn the_fuzz_corpus_parses_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus/dns_wire");
        let inputs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(!inputs.is_empty(), "{}: an empty corpus", dir.display());
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            if bytes.len() >= 2 {
                let _ = parse(&bytes[2..], u16::from_be_bytes([bytes[0], bytes[1]]));
            }
        }
    }
}
