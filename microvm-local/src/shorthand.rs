//! The AWS CLI's shorthand syntax for structures: `a=1,b=true,c={d=x,e=y}`,
//! `disabled={}`.

use serde_json::{Map, Value};

/// Parse shorthand into a JSON object; the error reads like the CLI's.
pub fn parse(s: &str) -> Result<Value, String> {
    let chars: Vec<char> = s.trim().chars().collect();
    let mut i = 0;
    object(&chars, &mut i, false)
}

fn scalar(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => v
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(v.to_string())),
    }
}

fn object(chars: &[char], i: &mut usize, nested: bool) -> Result<Value, String> {
    let mut m = Map::new();
    loop {
        if nested && chars.get(*i) == Some(&'}') {
            *i += 1;
            return Ok(Value::Object(m));
        }
        let start = *i;
        while *i < chars.len() && chars[*i] != '=' {
            if chars[*i] == ',' || chars[*i] == '}' {
                break;
            }
            *i += 1;
        }
        if chars.get(*i) != Some(&'=') {
            let got = chars.get(*i).map(|c| c.to_string()).unwrap_or("EOF".into());
            return Err(format!("Expected: '=', received: '{got}'"));
        }
        let key: String = chars[start..*i].iter().collect();
        *i += 1;
        let value = if chars.get(*i) == Some(&'{') {
            *i += 1;
            object(chars, i, true)?
        } else {
            let vs = *i;
            while *i < chars.len() && chars[*i] != ',' && chars[*i] != '}' {
                *i += 1;
            }
            scalar(&chars[vs..*i].iter().collect::<String>())
        };
        if key.is_empty() {
            return Err("Expected: a key before '='".into());
        }
        m.insert(key, value);
        match chars.get(*i) {
            Some(',') => *i += 1,
            Some('}') if nested => {}
            None if !nested => return Ok(Value::Object(m)),
            None => return Err("Expected: '}', received: 'EOF'".into()),
            Some(c) => return Err(format!("Expected: ',', received: '{c}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shorthand() {
        assert_eq!(
            parse("maxIdleDurationSeconds=900,suspendedDurationSeconds=300,autoResumeEnabled=true")
                .unwrap(),
            json!({"maxIdleDurationSeconds":900,"suspendedDurationSeconds":300,"autoResumeEnabled":true})
        );
        assert_eq!(parse("disabled={}").unwrap(), json!({"disabled":{}}));
        assert_eq!(
            parse("cloudWatch={logGroup=/a/b,logStream=s}").unwrap(),
            json!({"cloudWatch":{"logGroup":"/a/b","logStream":"s"}})
        );
        assert!(parse("oops").unwrap_err().contains("Expected: '='"));
        assert!(parse("a={b=1").is_err());
    }
}
