//! The proxy's own `oom_score_adj`, which kube-proxy sets too
//! (`--oom-score-adj`, -999 by default): a node short of memory should kill
//! almost anything before the process that keeps its Services working.

use std::path::Path;

/// The file of the running process.
pub const SELF: &str = "/proc/self/oom_score_adj";

/// What [`set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjusted {
    /// The file held the value already.
    Unchanged,
    /// The value was written over the one before.
    Set { from: i32 },
}

/// Why the value could not be set.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {action}: {source}")]
pub struct OomError {
    pub path: String,
    pub action: &'static str,
    /// `PermissionDenied` when lowering it below what the container runtime
    /// set needs CAP_SYS_RESOURCE.
    #[source]
    pub source: std::io::Error,
}

/// Sets the `oom_score_adj` file at `path` (see [`SELF`]) to `value`,
/// writing nothing when it holds that value already.
pub fn set(path: &Path, value: i32) -> Result<Adjusted, OomError> {
    let error = |action, source| OomError {
        path: path.display().to_string(),
        action,
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error("reading it", e))?;
    let current: i32 = text.trim().parse().map_err(|_| {
        let message = format!("expected a number, found {:?}", text.trim());
        error(
            "reading it",
            std::io::Error::new(std::io::ErrorKind::InvalidData, message),
        )
    })?;
    if current == value {
        return Ok(Adjusted::Unchanged);
    }
    std::fs::write(path, value.to_string()).map_err(|e| error("writing it", e))?;
    Ok(Adjusted::Set { from: current })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child process whose file the test may change: raising the value
    /// needs no privilege.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn read(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_value_is_written_once_and_read_back_by_the_kernel() {
        let child = Child(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        );
        let path = std::path::PathBuf::from(format!("/proc/{}/oom_score_adj", child.0.id()));
        let before = read(&path);
        let target = (before + 100).min(1000);
        assert_ne!(before, target, "the child starts at {before}");
        assert_eq!(set(&path, target).unwrap(), Adjusted::Set { from: before });
        assert_eq!(read(&path), target, "the kernel holds the value written");
        assert_eq!(set(&path, target).unwrap(), Adjusted::Unchanged);
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let err = set(Path::new("/nonexistent/oom_score_adj"), -999).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/nonexistent/oom_score_adj: reading it: "),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("oom_score_adj");
        std::fs::write(&bad, "many\n").unwrap();
        let text = set(&bad, -999).unwrap_err().to_string();
        assert!(text.contains("expected a number, found \"many\""), "{text}");
    }
}
