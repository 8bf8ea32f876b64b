//! Durations in configuration files and environment variables, as people write them: `90s`,
//! `500ms`, `10m`, `1h30m` (humantime), or a plain number of seconds. Written back in
//! humantime form. Use with `#[serde(with = "outpost_time::serde_duration")]`;
//! [`option`] is the same for `Option<Duration>`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*value))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// Parses a duration as written in a configuration file or variable.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|e| format!("invalid duration `{text}`: {e}"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration `{text}` ({e}); write it like 90s, 10m or 1h30m"))
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"30s\", \"500ms\" or \"10m\", or a number of seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format_args!("invalid duration {v}: negative")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(v)
            .map_err(|e| E::custom(format_args!("invalid duration {v}: {e}")))
    }
}

/// The same for `Option<Duration>`: absent or `null` is `None`.
pub mod option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => super::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super")] Duration);
        Ok(Option::<Wrap>::deserialize(deserializer)?.map(|Wrap(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Conf {
        #[serde(with = "super")]
        d: Duration,
        #[serde(default, with = "super::option")]
        o: Option<Duration>,
    }

    fn parse_json(json: &str) -> Result<Conf, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn humantime_text_or_seconds() {
        let check = |json: &str, d: Duration| {
            assert_eq!(parse_json(json).expect(json).d, d, "{json}");
        };
        check(r#"{"d": "90s"}"#, Duration::from_secs(90));
        check(r#"{"d": "1h30m"}"#, Duration::from_secs(5400));
        check(r#"{"d": "500ms"}"#, Duration::from_millis(500));
        check(r#"{"d": 30}"#, Duration::from_secs(30));
        check(r#"{"d": "2.5"}"#, Duration::from_millis(2500));
        let conf = parse_json(r#"{"d": "1m", "o": "2s"}"#).expect("valid");
        assert_eq!(conf.o, Some(Duration::from_secs(2)));
        assert_eq!(parse_json(r#"{"d": "1m"}"#).expect("valid").o, None);
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let err = parse_json(r#"{"d": "soon"}"#).expect_err("invalid");
        assert!(err.contains("invalid duration `soon`"), "{err}");
        assert!(err.contains("90s, 10m or 1h30m"), "{err}");
        let err = parse_json(r#"{"d": -3}"#).expect_err("negative");
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn written_back_as_humantime() {
        let conf = Conf {
            d: Duration::from_secs(5400),
            o: None,
        };
        assert_eq!(
            serde_json::to_string(&conf).expect("serialize"),
            r#"{"d":"1h 30m","o":null}"#
        );
    }
}
