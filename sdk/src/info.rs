/// What a plugin says about itself: shown by `qu plugin inspect`, used by
/// the host and the SDK to refuse unknown or missing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    /// For check plugins: what TARGET means.
    pub target: String,
    pub fields: Vec<Field>,
}

/// One setting a plugin understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub required: bool,
    pub default: Option<String>,
    pub description: String,
    /// Whether the value names where the plugin connects ([`Info::destination`]).
    pub destination: Option<Destination>,
}

/// What kind of destination a setting's value names. The host lets a call
/// connect to exactly the host and port such a value gives, and nothing
/// else in the settings opens anything: a setting the plugin connects to
/// must be declared, or the operator has to add it to the plugin's allow
/// list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An `http(s)://` or `smtp(s)://` URL: its host and port, or the
    /// scheme's default port.
    Url,
    /// `host:port` or `[v6]:port`; a bare host means `default_port` (none:
    /// the value must name a port).
    Address { default_port: Option<u16> },
    /// A bare host whose port is the value of `port_setting`, or one of
    /// `defaults` when that setting is absent.
    Host { port_setting: String, defaults: Vec<u16> },
}

impl Info {
    pub fn new(name: impl Into<String>, version: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            target: String::new(),
            fields: Vec::new(),
        }
    }

    /// What TARGET means for this check type.
    pub fn target(mut self, meaning: impl Into<String>) -> Self {
        self.target = meaning.into();
        self
    }

    /// A setting that must be given.
    pub fn required(mut self, name: impl Into<String>, description: impl Into<String>) -> Self {
        self.fields.push(Field {
            name: name.into(),
            required: true,
            default: None,
            description: description.into(),
            destination: None,
        });
        self
    }

    /// A setting that may be left out; `default` is shown in help text.
    pub fn optional(mut self, name: impl Into<String>, default: Option<&str>, description: impl Into<String>) -> Self {
        self.fields.push(Field {
            name: name.into(),
            required: false,
            default: default.map(str::to_string),
            description: description.into(),
            destination: None,
        });
        self
    }

    /// Declares that the setting added last names a destination of `kind`
    /// (see [`Destination`]): `.required("url", "where to POST").destination(Destination::Url)`.
    ///
    /// # Panics
    ///
    /// When no setting was added before it.
    pub fn destination(mut self, kind: Destination) -> Self {
        let field = self.fields.last_mut().expect("Info::destination follows the setting it describes");
        field.destination = Some(kind);
        self
    }
}
