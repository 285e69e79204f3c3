//! Reading a configuration's JSON tree: keys in kebab-case or snake_case, typed values
//! with their ranges, and the keys left unread.

use super::ConfigFileError;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub(super) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// One JSON object being read: finds keys in kebab-case or snake_case, remembers which
/// were used.
pub(super) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    used: BTreeSet<&'a str>,
}

impl<'a> Obj<'a> {
    pub(super) fn new(path: &str, map: &'a Map<String, Value>) -> Self {
        Obj {
            path: path.to_owned(),
            map,
            used: BTreeSet::new(),
        }
    }

    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get(&mut self, key: &str) -> Option<&'a Value> {
        let snake = key.replace('-', "_");
        for (k, v) in self.map {
            if k == key || *k == snake {
                self.used.insert(k.as_str());
                return Some(v);
            }
        }
        None
    }

    pub(super) fn type_error(
        &self,
        key: &str,
        expected: &'static str,
        v: &Value,
    ) -> ConfigFileError {
        ConfigFileError::Type {
            key: self.key(key),
            expected,
            found: kind(v),
        }
    }

    pub(super) fn range<T: fmt::Display>(
        &self,
        key: &str,
        value: T,
        allowed: impl Into<String>,
    ) -> ConfigFileError {
        ConfigFileError::Range {
            key: self.key(key),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    pub(super) fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(key, "a boolean", v)),
        }
    }

    pub(super) fn string(&mut self, key: &str) -> Result<Option<&'a str>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.type_error(key, "a string", v)),
        }
    }

    /// An integer in `[min, max]`.
    pub(super) fn uint(
        &mut self,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(self.range(key, n, format!("an integer in [{min}, {max}]"))),
            },
            Some(v) => Err(self.type_error(key, "an integer", v)),
        }
    }

    pub(super) fn usize(
        &mut self,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<usize>, ConfigFileError> {
        Ok(self
            .uint(key, min, max)?
            .map(|x| usize::try_from(x).unwrap_or(usize::MAX)))
    }

    /// A number in `[min, max]`.
    pub(super) fn float(
        &mut self,
        key: &str,
        min: f64,
        max: f64,
    ) -> Result<Option<f64>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() && x >= min && x <= max => Ok(Some(x)),
                _ => Err(self.range(key, n, format!("a number in [{min}, {max}]"))),
            },
            Some(v) => Err(self.type_error(key, "a number", v)),
        }
    }

    /// Seconds in `(0, max]` (or `[0, max]` with `zero`).
    pub(super) fn seconds(
        &mut self,
        key: &str,
        zero: bool,
        max: f64,
    ) -> Result<Option<Duration>, ConfigFileError> {
        let Some(s) = self.float(key, 0.0, max)? else {
            return Ok(None);
        };
        if s == 0.0 && !zero {
            return Err(self.range(key, s, format!("seconds in (0, {max}]")));
        }
        Ok(Some(Duration::from_secs_f64(s)))
    }

    /// Seconds, or `null` (present) for "off".
    pub(super) fn nullable_seconds(
        &mut self,
        key: &str,
        max: f64,
    ) -> Result<Option<Option<Duration>>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => Ok(Some(self.seconds(key, false, max)?)),
        }
    }

    /// A pair of integers `[a, b]` with `1 ≤ b ≤ a`.
    pub(super) fn pair(&mut self, key: &str) -> Result<Option<(usize, usize)>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) if a.len() == 2 => {
                let n = |v: &Value| v.as_u64().and_then(|x| usize::try_from(x).ok());
                match (n(&a[0]), n(&a[1])) {
                    (Some(hi), Some(lo)) if 1 <= lo && lo <= hi && hi <= 1 << 24 => {
                        Ok(Some((hi, lo)))
                    }
                    _ => Err(self.range(
                        key,
                        Value::Array(a.clone()),
                        "[max, gc target] with 1 <= gc target <= max <= 16777216",
                    )),
                }
            }
            Some(v) => Err(self.type_error(key, "a pair [max, gc target]", v)),
        }
    }

    pub(super) fn object(&mut self, key: &str) -> Result<Option<Obj<'a>>, ConfigFileError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Obj::new(&self.key(key), m))),
            Some(v) => Err(self.type_error(key, "an object", v)),
        }
    }

    /// Keys present but not read, dotted.
    pub(super) fn unused(&self) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .map(|k| self.key(k))
            .collect()
    }
}

pub(super) fn socket_addr(
    o: &Obj<'_>,
    key: &str,
    text: &str,
    default_port: u16,
) -> Result<SocketAddr, ConfigFileError> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .map_err(|_| o.range(key, format!("{text:?}"), "ADDR:PORT, [ADDR6]:PORT or ADDR"))
}
