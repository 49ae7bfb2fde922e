//! Parsed input values. Each type can only be built through `parse`, so a
//! value that exists has passed its rule; commands carry these types, and
//! the gateway turns a parse failure into a 422 naming the field.

use serde::{Deserialize, Serialize};

/// Why a value was refused; the message is safe to show to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub &'static str);

fn has_control_chars(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Trimmed single-line text with a length bound in characters.
fn bounded_line(
    raw: &str,
    max: usize,
    empty: &'static str,
    long: &'static str,
) -> Result<String, InvalidValue> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(InvalidValue(empty));
    }
    if s.chars().count() > max {
        return Err(InvalidValue(long));
    }
    if has_control_chars(s) {
        return Err(InvalidValue("must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// An email address as the user typed it (trimmed). Uniqueness is
/// case-insensitive: compare [`Email::normalized`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(InvalidValue("is required"));
        }
        if s.len() > 254 {
            return Err(InvalidValue("must be at most 254 characters"));
        }
        let invalid = InvalidValue("must be an email address like name@example.com");
        let (local, domain) = s.split_once('@').ok_or(invalid.clone())?;
        let domain_ok = !domain.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty()
            || local.len() > 64
            || !domain_ok
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which uniqueness holds.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

/// A password that satisfies the policy (NIST 800-63B: length only, no
/// composition rules). Never stored, logged or serialized.
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 10;
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: String) -> Result<Self, InvalidValue> {
        let n = raw.chars().count();
        if n < Self::MIN_CHARS {
            return Err(InvalidValue("must be at least 10 characters"));
        }
        if n > Self::MAX_CHARS {
            return Err(InvalidValue("must be at most 128 characters"));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, max = $max:expr, empty = $empty:expr, long = $long:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                bounded_line(raw, $max, $empty, $long).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }
    };
}

text_value!(
    /// How a user is shown to others.
    DisplayName, max = 100, empty = "is required", long = "must be at most 100 characters"
);
text_value!(
    /// A project's name.
    ProjectName, max = 120, empty = "is required", long = "must be at most 120 characters"
);
text_value!(
    /// A workspace's name, unique among the live workspaces of its project.
    WorkspaceName, max = 100, empty = "is required", long = "must be at most 100 characters"
);

/// A project's free-text description; may be empty, may span lines.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 2000;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let s = raw.trim();
        if s.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue("must be at most 2000 characters"));
        }
        if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(InvalidValue("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A file's path inside a workspace: relative, `/`-separated, no empty,
/// `.` or `..` segments, so two spellings never name one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FilePath(String);

impl FilePath {
    pub const MAX_BYTES: usize = 512;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() {
            return Err(InvalidValue("is required"));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(InvalidValue("must be at most 512 bytes"));
        }
        if raw.contains('\\') || has_control_chars(raw) {
            return Err(InvalidValue(
                "must not contain backslashes or control characters",
            ));
        }
        if raw
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(InvalidValue(
                "must be a relative path without empty, '.' or '..' segments",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The content of a file. Text (UTF-8) only; bounded at 768 KiB so that a
/// save of the largest file, wrapped in JSON, fits the default 1 MiB
/// request body limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent(String);

impl FileContent {
    pub const MAX_BYTES: usize = 768 * 1024;

    pub fn parse(raw: String) -> Result<Self, InvalidValue> {
        if raw.len() > Self::MAX_BYTES {
            return Err(InvalidValue("must be at most 768 KiB"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_compared_case_insensitively() {
        let e = Email::parse("  Ada@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "Ada@Example.COM");
        assert_eq!(e.normalized(), "ada@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a da@example.com",
            "ada@@example.com",
            "ada@.example.com",
            "ada@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn password_policy_is_length_only() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("a".repeat(9)).is_err());
        assert!(Password::parse("a".repeat(10)).is_ok());
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("a".repeat(129)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("a".repeat(10)).unwrap()),
            "Password(<redacted>)"
        );
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(ProjectName::parse("  Apollo ").unwrap().as_str(), "Apollo");
        assert!(ProjectName::parse("   ").is_err());
        assert!(ProjectName::parse(&"x".repeat(121)).is_err());
        assert!(DisplayName::parse("bad\u{7}name").is_err());
        assert!(Description::parse("two\nlines").is_ok());
        assert!(Description::parse(&"x".repeat(2001)).is_err());
    }

    #[test]
    fn file_paths_have_one_spelling() {
        assert!(FilePath::parse("src/main.py").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/./b",
            "../x",
            "a/..",
            "a\\b",
            "trailing/",
            "nul\0",
        ] {
            assert!(FilePath::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(FilePath::parse(&"a".repeat(513)).is_err());
    }

    #[test]
    fn file_content_is_bounded() {
        assert!(FileContent::parse("x".repeat(FileContent::MAX_BYTES)).is_ok());
        assert!(FileContent::parse("x".repeat(FileContent::MAX_BYTES + 1)).is_err());
    }
}
