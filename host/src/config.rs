//! Human-readable units and validated per-run limits.
//!
//! Every duration and size a user types (`250ms`, `30s`, `64MiB`) is parsed here, and every
//! range check on them lives here too, so a mistake is reported before anything is loaded or
//! connected. The main type is [`Limits`].

use std::time::Duration;

use bytesize::ByteSize;

/// The smallest memory limit a run accepts: below this not even a tiny Rust task instantiates.
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// The largest memory limit a run accepts: the most a 32-bit WebAssembly memory can address.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// The shortest timeout a run accepts.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest timeout a run accepts. Longer work should be split into several jobs.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration with a unit, such as `250ms`, `30s`, `5m` or `1h 30m`.
///
/// # Errors
///
/// A bare number is refused, because `30` could mean seconds or milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.parse::<f64>().is_ok() {
        return Err(format!(
            "`{text}` has no unit; write it as `{text}s` or `{text}ms`"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("`{text}` is not a duration ({err}); write e.g. `250ms` or `30s`"))
}

/// Parses a size with a unit, such as `64MiB`, `512KiB` or `1GiB` (`MB` means 10^6 bytes).
///
/// # Errors
///
/// A bare number is refused, because `64` is almost never meant as 64 bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.parse::<f64>().is_ok() {
        return Err(format!(
            "`{text}` has no unit; write it as e.g. `{text}MiB`"
        ));
    }
    text.parse::<ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("`{text}` is not a size ({err}); write e.g. `64MiB`"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// The resource limits of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory (summed over all of the task's memories) the attempt may use.
    /// Default 64 MiB.
    pub memory_bytes: u64,
    /// The wall-clock time the attempt may take, including instantiation. Default 30 s.
    pub timeout: Duration,
    /// An optional budget of WebAssembly fuel (roughly, instructions executed). Unset by
    /// default: fuel makes call-heavy code up to ~60% slower, so the timeout is the usual bound.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            fuel: None,
        }
    }
}

impl Limits {
    /// Checks that every limit is within the range the executor supports.
    ///
    /// # Errors
    ///
    /// Returns a message that names the limit, the value and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&self.memory_bytes) {
            return Err(format!(
                "memory limit {} is out of range; use between {} and {}",
                ByteSize(self.memory_bytes),
                ByteSize(MIN_MEMORY_BYTES),
                ByteSize(MAX_MEMORY_BYTES),
            ));
        }
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&self.timeout) {
            return Err(format!(
                "timeout {} is out of range; use between {} and {}",
                format_duration(self.timeout),
                format_duration(MIN_TIMEOUT),
                format_duration(MAX_TIMEOUT),
            ));
        }
        if self.fuel == Some(0) {
            return Err(
                "a fuel budget of 0 would stop every task at once; omit it or use \
                        a positive number"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn refuses_durations_without_units() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("no unit"), "{err}");
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn parses_sizes_with_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    }

    #[test]
    fn refuses_sizes_without_units() {
        assert!(parse_size("64").unwrap_err().contains("no unit"));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn default_limits_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        let tiny = Limits {
            memory_bytes: 1024,
            ..Limits::default()
        };
        assert!(tiny.validate().unwrap_err().contains("memory limit"));

        let long = Limits {
            timeout: Duration::from_secs(100_000),
            ..Limits::default()
        };
        assert!(long.validate().unwrap_err().contains("timeout"));

        let no_fuel = Limits {
            fuel: Some(0),
            ..Limits::default()
        };
        assert!(no_fuel.validate().is_err());
    }
}
