//! JSON parsing that names the field at fault.
//!
//! Parsing is strict: unknown fields and out-of-range values are errors that name the
//! field by its JSON path, because the person reading the error is an image author
//! looking at their `image.json` or a host developer looking at a request, not at our
//! source.

use serde::de::DeserializeOwned;

/// A config or request that failed validation; `field` is the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read image config {path}: {source} (pass --image-config PATH or put it at /etc/microvm/image.json)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid image config {path}: {error}")]
    Invalid { path: String, error: FieldError },
}

/// Deserialize JSON and report the path of the first bad field (`hooks.port`, ...).
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(body)".to_string()
        } else {
            path
        };
        // serde_json appends " at line L column C", which is noise next to a field path.
        let msg = e.inner().to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        FieldError::new(field, msg)
    })
}

/// [`from_json`] for documents made of objects: serde's derived structs also take a
/// JSON array, field by field in declaration order (`[null, null, "..."]` would be a
/// `/resume` with entropy), so an array anywhere but at the `arrays` paths (like
/// `command`) is refused, naming where it is.
pub fn from_json_objects<T: DeserializeOwned>(
    bytes: &[u8],
    arrays: &[&str],
) -> Result<T, FieldError> {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Some(at) = misplaced_array(&doc, None, arrays) {
            let field = at.unwrap_or_else(|| "(body)".to_string());
            return Err(FieldError::new(field, "must be an object, not an array"));
        }
    }
    from_json(bytes)
}

/// Where the first array not at an allowed path is: Some(None) for the document
/// itself, Some(Some(path)) below it (paths spelled as serde_path_to_error does).
fn misplaced_array(
    v: &serde_json::Value,
    path: Option<&str>,
    arrays: &[&str],
) -> Option<Option<String>> {
    use serde_json::Value;
    match v {
        Value::Array(items) if path.is_some_and(|p| arrays.contains(&p)) => {
            let p = path.unwrap_or_default();
            items
                .iter()
                .enumerate()
                .find_map(|(i, x)| misplaced_array(x, Some(&format!("{p}[{i}]")), arrays))
        }
        Value::Array(_) => Some(path.map(str::to_string)),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = match path {
                None => k.clone(),
                Some(p) => format!("{p}.{k}"),
            };
            misplaced_array(x, Some(&p), arrays)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        a: Option<Inner>,
        list: Option<Vec<String>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        x: Option<u32>,
    }

    #[test]
    fn arrays_are_objects_nowhere_but_where_allowed() {
        // What serde alone accepts: a struct as an array.
        assert!(from_json::<Doc>(br#"[null, ["a"]]"#).is_ok());
        let err = |b: &[u8]| from_json_objects::<Doc>(b, &["list"]).unwrap_err().field;
        assert_eq!(err(br#"[null, ["a"]]"#), "(body)");
        assert_eq!(err(br#"{"a": [5]}"#), "a");
        assert_eq!(err(br#"{"list": [["nested"]]}"#), "list[0]");
        assert_eq!(err(br#"{"": {"a": []}}"#), ".a");
        assert!(from_json_objects::<Doc>(br#"{"a": {"x": 1}, "list": ["a"]}"#, &["list"]).is_ok());
        // Not JSON at all: the usual error.
        assert_eq!(
            from_json_objects::<Doc>(b"nope", &[]).unwrap_err().field,
            "(body)"
        );
    }
}
