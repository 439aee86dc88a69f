//! A plugin that misbehaves on request, for the sandbox tests. The target
//! names the misdeed; each must end in a clear, specific failure of that
//! one call and nothing else.

use qu_sdk::{Check, Config, Error, Info, Outcome};

struct Hostile;

impl Check for Hostile {
    fn info() -> Info {
        Info::new("hostile", env!("CARGO_PKG_VERSION"), "misbehaves on request (tests only)")
            .target("spin | alloc | read-file | env | connect:HOST:PORT | http:URL | panic | ok")
    }

    fn check(_config: &Config, target: &str) -> Result<Outcome, Error> {
        match target {
            "ok" => Ok(Outcome::up("behaving")),
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut v: Vec<u8> = Vec::new();
                v.resize(1 << 30, 1);
                Ok(Outcome::up(format!("allocated {} bytes", std::hint::black_box(&v).len())))
            }
            "read-file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => Ok(Outcome::up(format!("read /etc/passwd: {} bytes", text.len()))),
                Err(e) => Err(Error::permanent(format!("read /etc/passwd: {e}"))),
            },
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                if vars.is_empty() {
                    Err(Error::permanent("no environment variables visible"))
                } else {
                    Ok(Outcome::up(format!("saw {} variables: {}", vars.len(), vars.join(","))))
                }
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            other => {
                if let Some(address) = other.strip_prefix("connect:") {
                    return match std::net::TcpStream::connect(address) {
                        Ok(_) => Ok(Outcome::up(format!("connected to {address}"))),
                        Err(e) => Err(Error::permanent(format!("connect {address}: {e}"))),
                    };
                }
                if let Some(url) = other.strip_prefix("http:") {
                    let response = qu_sdk::http::get(url).send().map_err(|e| Error::permanent(e.to_string()))?;
                    return Ok(Outcome::up(format!("status {}", response.status)));
                }
                Err(Error::config(format!("unknown misdeed `{other}`")))
            }
        }
    }
}

qu_sdk::export_check!(Hostile);
