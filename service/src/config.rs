//! Loading a TOML config file: one reader for the node's and the hub's files, and the error both report.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Tenant when none is configured, the same default `oms ca init` uses.
pub fn default_tenant() -> String {
    "default".to_owned()
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Reads `path` and parses it as TOML into `T`; the caller validates what the types cannot.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), source: Box::new(e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        n: u32,
    }

    #[test]
    fn reads_parses_and_names_the_file_on_each_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        assert!(matches!(load_toml::<Sample>(&path), Err(ConfigError::Read { path: p, .. }) if p == path));
        std::fs::write(&path, "n = \"x\"").unwrap();
        let e = load_toml::<Sample>(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }) && e.to_string().contains("c.toml"), "{e}");
        std::fs::write(&path, "n = 3").unwrap();
        assert_eq!(load_toml::<Sample>(&path).unwrap().n, 3);
    }
}
