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
        self.fields.push(Field { name: name.into(), required: true, default: None, description: description.into() });
        self
    }

    /// A setting that may be left out; `default` is shown in help text.
    pub fn optional(mut self, name: impl Into<String>, default: Option<&str>, description: impl Into<String>) -> Self {
        self.fields.push(Field {
            name: name.into(),
            required: false,
            default: default.map(str::to_string),
            description: description.into(),
        });
        self
    }
}
