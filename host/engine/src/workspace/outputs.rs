//! Named outputs: the `key=value` and `key<<DELIM` lines a stage writes
//! to `$SENTINEL_OUTPUT`.

use std::collections::BTreeMap;

/// A `$SENTINEL_OUTPUT` line that is not `key=value` or `key<<DELIM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct OutputsError {
    pub line: usize,
    pub message: String,
}

/// Parses `$SENTINEL_OUTPUT`: `key=value` lines, and `key<<DELIM` … `DELIM`
/// for multi-line values. Returns the outputs or what is wrong, and where.
pub fn parse_outputs(text: &str) -> Result<BTreeMap<String, String>, OutputsError> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let valid_key = |k: &str| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if let Some((key, delim)) = line.split_once("<<")
            && valid_key(key)
            && !delim.is_empty()
            && !line.contains('=')
        {
            let mut value = Vec::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                if l == delim {
                    closed = true;
                    break;
                }
                value.push(l);
            }
            if !closed {
                return Err(OutputsError {
                    line: n + 1,
                    message: format!("`{key}<<{delim}` is never closed by `{delim}`"),
                });
            }
            out.insert(key.to_string(), value.join("\n"));
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if valid_key(key) => {
                out.insert(key.to_string(), value.to_string());
            }
            _ => {
                return Err(OutputsError {
                    line: n + 1,
                    message: "expected `key=value` or `key<<DELIMITER`".into(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        let o = parse_outputs("a=1\nurl=http://x?y=z\n\nmulti<<EOF\nl1\nl2\nEOF\n").unwrap();
        assert_eq!(o["a"], "1");
        assert_eq!(o["url"], "http://x?y=z");
        assert_eq!(o["multi"], "l1\nl2");
        assert!(
            parse_outputs("oops")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(
            parse_outputs("m<<X\nnever")
                .unwrap_err()
                .to_string()
                .contains("never closed")
        );
    }
}
