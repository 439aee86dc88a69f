use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// A check's or alert's settings (`--set KEY=VALUE`), with typed access
/// and errors that name the key and what was expected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Settings from literal pairs, as a plugin's native tests build them:
    /// `Config::from_pairs(&[("field", "status"), ("expect", "ok")])`.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// All settings, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The raw text of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `key`, converted; a missing key is a configuration error.
    pub fn required<T: FromValue>(&self, key: &str) -> Result<T, Error> {
        match self.get(key) {
            Some(text) => T::from_value(text).map_err(|expected| bad(key, text, &expected)),
            None => Err(Error::Config(format!("missing setting `{key}`"))),
        }
    }

    /// `key`, converted, if given.
    pub fn optional<T: FromValue>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get(key) {
            Some(text) => T::from_value(text).map(Some).map_err(|expected| bad(key, text, &expected)),
            None => Ok(None),
        }
    }

    /// `key`, converted, or `default`.
    pub fn get_or<T: FromValue>(&self, key: &str, default: T) -> Result<T, Error> {
        Ok(self.optional(key)?.unwrap_or(default))
    }
}

fn bad(key: &str, text: &str, expected: &str) -> Error {
    Error::Config(format!("setting `{key}`: expected {expected}, got `{text}`"))
}

/// A type a setting can be read as. `Err` says what was expected.
pub trait FromValue: Sized {
    fn from_value(text: &str) -> Result<Self, String>;
}

impl FromValue for String {
    fn from_value(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
}

impl FromValue for bool {
    fn from_value(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err("true or false".into()),
        }
    }
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(text: &str) -> Result<Self, String> {
                <$t>::from_str(text.trim())
                    .map_err(|_| format!("a number from {} to {}", <$t>::MIN, <$t>::MAX))
            }
        }
    )*};
}
numbers!(u8, u16, u32, u64, i32, i64);

impl FromValue for f64 {
    fn from_value(text: &str) -> Result<Self, String> {
        f64::from_str(text.trim()).ok().filter(|v| v.is_finite()).ok_or_else(|| "a number".into())
    }
}

impl FromValue for Duration {
    /// `500ms`, `10s`, `5m`, `1h`, `2d`; a bare number is seconds.
    fn from_value(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let expected = || "a duration such as 500ms, 10s, 5m or 1h".to_string();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits.parse().map_err(|_| expected())?;
        let millis = match unit {
            "ms" => value,
            "" | "s" => value.checked_mul(1_000).ok_or_else(expected)?,
            "m" => value.checked_mul(60_000).ok_or_else(expected)?,
            "h" => value.checked_mul(3_600_000).ok_or_else(expected)?,
            "d" => value.checked_mul(86_400_000).ok_or_else(expected)?,
            _ => return Err(expected()),
        };
        Ok(Duration::from_millis(millis))
    }
}

impl FromValue for Vec<String> {
    /// A comma-separated list; blanks are dropped.
    fn from_value(text: &str) -> Result<Self, String> {
        Ok(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
    }
}

impl FromValue for std::net::IpAddr {
    fn from_value(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| "an IP address".into())
    }
}

impl FromValue for std::net::SocketAddr {
    fn from_value(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| "an address such as 192.0.2.1:53 or [2001:db8::1]:53".into())
    }
}

/// The fuzz target of the SDK's settings (`tests/fuzz`): lines of
/// `KEY=VALUE` read as every type a plugin may ask for. Never panics.
#[doc(hidden)]
pub fn fuzz_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pairs: Vec<(String, String)> = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (line.to_string(), String::new()),
        })
        .collect();
    let config = Config::new(pairs);
    for (key, _) in config.pairs() {
        let _ = config.optional::<String>(key);
        let _ = config.optional::<bool>(key);
        let _ = config.optional::<u8>(key);
        let _ = config.optional::<u16>(key);
        let _ = config.optional::<u32>(key);
        let _ = config.optional::<u64>(key);
        let _ = config.optional::<i64>(key);
        let _ = config.optional::<i32>(key);
        let _ = config.optional::<f64>(key);
        let _ = config.optional::<Duration>(key);
        let _ = config.optional::<Vec<String>>(key);
        let _ = config.optional::<std::net::IpAddr>(key);
        let _ = config.optional::<std::net::SocketAddr>(key);
        let _ = config.get_or(key, Duration::from_secs(1));
        let _ = config.required::<u16>(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_access_names_the_key_and_the_expectation() {
        let c = Config::from_pairs(&[("port", "99999"), ("warn", "7d"), ("on", "yes")]);
        assert_eq!(
            c.required::<u16>("port").unwrap_err().to_string(),
            "setting `port`: expected a number from 0 to 65535, got `99999`"
        );
        assert_eq!(c.required::<Duration>("warn").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(c.required::<bool>("on").unwrap());
        assert_eq!(c.required::<String>("nope").unwrap_err().to_string(), "missing setting `nope`");
        assert_eq!(c.get_or("nope", 5u32).unwrap(), 5);
    }

    /// The committed fuzz corpus (`tests/fuzz/corpus/sdk_config`) runs
    /// cleanly: every input that once found a bug stays a test.
    #[test]
    fn the_fuzz_corpus_runs_cleanly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus/sdk_config");
        let inputs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(!inputs.is_empty(), "{}: an empty corpus", dir.display());
        for input in inputs {
            fuzz_config(&std::fs::read(&input).unwrap());
        }
    }
}
