//! The secret masker. Every byte bound for a log, a document or an output
//! passes through it. It masks each secret in its raw form, in base64 (all
//! three alignments, standard and URL-safe alphabets), URL-encoded,
//! JSON-escaped, and each line of a multi-line secret, replacing every
//! occurrence with `***`. [`StreamMasker`] keeps state across chunk
//! boundaries, so a secret split over two chunks is still masked.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};

/// What replaces a secret.
pub const MASK: &[u8] = b"***";

/// The shortest secret Sentinel accepts: shorter ones cannot be masked
/// without masking ordinary text.
pub const MIN_SECRET_LEN: usize = 4;

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error(
        "a secret must be at least {MIN_SECRET_LEN} bytes long to be masked reliably (got {0} bytes)"
    )]
    TooShort(usize),
}

/// An immutable set of secrets and their compiled patterns. Add secrets with
/// [`SecretSet::with`]; share it with [`Arc`].
#[derive(Clone, Default)]
pub struct SecretSet {
    secrets: Vec<Vec<u8>>,
    patterns: Vec<Vec<u8>>,
    matcher: Option<AhoCorasick>,
    max_len: usize,
    /// Some pattern holds a newline (a match can span lines).
    multiline: bool,
}

impl std::fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets themselves.
        f.debug_struct("SecretSet")
            .field("secrets", &self.secrets.len())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

/// The base64 text that a secret produces wherever it sits in a larger
/// encoded stream: for each of the three byte alignments, the characters
/// whose six bits come only from the secret.
fn base64_fragments(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        for pad in 0..3usize {
            let mut input = vec![0u8; pad];
            input.extend_from_slice(secret);
            let encoded = engine.encode(&input);
            let first = (8 * pad).div_ceil(6);
            let last = 8 * (pad + secret.len()) / 6;
            if last > first {
                out.push(encoded.as_bytes()[first..last].to_vec());
            }
        }
    }
    out
}

fn percent_encoded(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut upper = Vec::new();
    let mut lower = Vec::new();
    let mut form = Vec::new();
    for &b in secret {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            upper.push(b);
            lower.push(b);
            form.push(b);
        } else {
            let hex = format!("%{b:02X}");
            upper.extend_from_slice(hex.as_bytes());
            lower.extend_from_slice(hex.to_ascii_lowercase().as_bytes());
            if b == b' ' {
                form.push(b'+');
            } else {
                form.extend_from_slice(hex.as_bytes());
            }
        }
    }
    vec![upper, lower, form]
}

fn json_escaped(secret: &[u8]) -> Vec<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(secret) else {
        return Vec::new();
    };
    let Ok(quoted) = serde_json::to_string(text) else {
        return Vec::new();
    };
    let plain = quoted[1..quoted.len() - 1].to_string();
    let slashes = plain.replace('/', "\\/");
    let mut ascii = String::new();
    for c in plain.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    vec![plain.into_bytes(), slashes.into_bytes(), ascii.into_bytes()]
}

/// Every form of `secret` that is masked.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![secret.to_vec()];
    if secret.contains(&b'\n') {
        for line in secret.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            forms.push(line.to_vec());
        }
    }
    forms.extend(base64_fragments(secret));
    forms.extend(percent_encoded(secret));
    forms.extend(json_escaped(secret));
    forms.retain(|f| f.len() >= MIN_SECRET_LEN);
    forms
}

impl SecretSet {
    /// An empty set (masks nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// A new set holding these secrets too. Refuses secrets shorter than
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn with<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, MaskError> {
        let mut next = self.clone();
        let mut changed = false;
        for s in secrets {
            if s.len() < MIN_SECRET_LEN {
                return Err(MaskError::TooShort(s.len()));
            }
            if next.secrets.iter().any(|e| e == s) {
                continue;
            }
            next.secrets.push(s.to_vec());
            next.patterns.extend(forms(s));
            changed = true;
        }
        if changed {
            next.patterns.sort();
            next.patterns.dedup();
            next.max_len = next.patterns.iter().map(Vec::len).max().unwrap_or(0);
            next.multiline = next.patterns.iter().any(|p| p.contains(&b'\n'));
            next.matcher = Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .build(&next.patterns)
                    .map_err(|_| MaskError::TooShort(0))?,
            );
        }
        Ok(next)
    }

    /// Masks a whole buffer at once.
    pub fn mask(&self, input: &[u8]) -> Vec<u8> {
        let mut s = StreamMasker::new(Arc::new(self.clone()));
        let mut out = Vec::with_capacity(input.len());
        s.push(input, &mut out);
        s.finish(&mut out);
        out
    }

    /// Masks a string (masking keeps valid UTF-8 valid except inside a masked
    /// multi-byte character, which is replaced lossily).
    pub fn mask_str(&self, input: &str) -> String {
        if self.is_empty() {
            return input.to_string();
        }
        String::from_utf8_lossy(&self.mask(input.as_bytes())).into_owned()
    }

    /// True when `input` still holds any form of any secret (the final sweep).
    pub fn leaks(&self, input: &[u8]) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(input))
    }

    /// The length of the longest form masked (how much two chunks of a
    /// stream must overlap to find a secret across them).
    pub fn longest_pattern(&self) -> usize {
        self.max_len
    }

    /// True when `doc` serialises and holds no secret. A document that
    /// cannot be serialised is never called clean: the sweep fails closed.
    pub fn sweeps<T: serde::Serialize>(&self, doc: &T) -> bool {
        match serde_json::to_vec(doc) {
            Ok(bytes) => !self.leaks(&bytes),
            Err(e) => {
                tracing::error!("a document could not be serialised for the secret sweep: {e}");
                false
            }
        }
    }
}

/// The values a sensitive stage's output makes secret: the whole output,
/// each named output, each line, and — when the output is JSON — each
/// string in it (so a value plucked from it, `jq -r .Credentials.Key`, is
/// masked too). Pieces shorter than [`MIN_SECRET_LEN`] bytes (`{`, `}` of
/// pretty-printed JSON) are not secrets of their own.
pub fn sensitive_values<'a>(
    output: &'a str,
    outputs: impl IntoIterator<Item = &'a String>,
) -> Vec<Vec<u8>> {
    fn strings(v: &serde_json::Value, out: &mut Vec<Vec<u8>>) {
        match v {
            serde_json::Value::String(s) => out.push(s.as_bytes().to_vec()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut values: Vec<Vec<u8>> = std::iter::once(output)
        .chain(outputs.into_iter().map(String::as_str))
        .chain(output.lines())
        .map(|v| v.trim_end_matches('\r').as_bytes().to_vec())
        .collect();
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(output) {
        strings(&json, &mut values);
    }
    values.retain(|v| v.len() >= MIN_SECRET_LEN);
    values.sort();
    values.dedup();
    values
}

/// Masks a stream chunk by chunk, holding back just enough bytes to catch
/// a secret that straddles two chunks.
#[derive(Debug)]
pub struct StreamMasker {
    set: Arc<SecretSet>,
    carry: Vec<u8>,
}

impl StreamMasker {
    /// A masker for one stream.
    pub fn new(set: Arc<SecretSet>) -> Self {
        Self {
            set,
            carry: Vec::new(),
        }
    }

    /// Masks `chunk`, appending what is safe to emit to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(matcher) = &self.set.matcher else {
            out.extend_from_slice(chunk);
            return;
        };
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        // A match starting before `safe` is complete in `buf`: every pattern
        // starting there fits, so leftmost-longest sees its longest choice.
        let safe = buf.len().saturating_sub(self.set.max_len - 1);
        let end = emit(matcher, &buf, safe, out);
        self.carry = buf.split_off(end);
    }

    /// Emits what is held back when it ends a line and no secret spans
    /// lines: a match starting in it would have to hold that newline, so
    /// none can end in what comes later. The log writer calls it when the
    /// other stream speaks, so lines of the two streams keep their order.
    pub fn flush_at_line_end(&mut self, out: &mut Vec<u8>) {
        if self.carry.last() == Some(&b'\n') && !self.set.multiline {
            self.finish(out);
        }
    }

    /// Flushes what is held back, at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.carry);
        match &self.set.matcher {
            Some(m) => {
                emit(m, &buf, buf.len(), out);
            }
            None => out.extend_from_slice(&buf),
        }
    }
}

/// Emits `buf` with matches starting before `safe` masked; returns how far
/// it emitted (at least `safe`, more when a match runs past it).
fn emit(matcher: &AhoCorasick, buf: &[u8], safe: usize, out: &mut Vec<u8>) -> usize {
    let mut cursor = 0;
    for m in matcher.find_iter(buf) {
        if m.start() >= safe {
            break;
        }
        out.extend_from_slice(&buf[cursor..m.start()]);
        out.extend_from_slice(MASK);
        cursor = m.end();
    }
    let end = cursor.max(safe);
    out.extend_from_slice(&buf[cursor..end]);
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(secrets: &[&str]) -> SecretSet {
        SecretSet::new()
            .with(secrets.iter().map(|s| s.as_bytes()))
            .unwrap()
    }

    #[test]
    fn masks_all_forms() {
        let s = set(&["hunter2!", "p@ss word/é"]);
        assert_eq!(s.mask_str("pw=hunter2! ok"), "pw=*** ok");
        let b64 = STANDARD.encode("xhunter2!y");
        assert!(
            !s.mask_str(&b64)
                .contains(&STANDARD.encode("hunter2!")[2..8])
        );
        assert_eq!(s.mask_str("p%40ss%20word%2F%C3%A9"), "***");
        assert_eq!(s.mask_str("p%40ss+word%2F%C3%A9"), "***");
        assert_eq!(s.mask_str(r#"{"v":"p@ss word\/é"}"#), r#"{"v":"***"}"#);
        assert_eq!(s.mask_str(r#"{"v":"p@ss word/\u00e9"}"#), r#"{"v":"***"}"#);
    }

    #[test]
    fn multi_line_secrets_mask_each_line() {
        let s = set(&["-----BEGIN KEY-----\nabcdefgh\r\nxy\n-----END KEY-----"]);
        assert_eq!(s.mask_str("line: abcdefgh\n"), "line: ***\n");
        assert_eq!(s.mask_str("-----END KEY-----"), "***");
    }

    #[test]
    fn refuses_short_secrets() {
        assert_eq!(
            SecretSet::new().with([b"abc".as_slice()]).unwrap_err(),
            MaskError::TooShort(3)
        );
    }

    #[test]
    fn straddling_chunks() {
        let s = Arc::new(set(&["supersecret"]));
        let text = b"aaaa supersecret bbbb supersecret";
        for split in 0..text.len() {
            let mut m = StreamMasker::new(s.clone());
            let mut out = Vec::new();
            m.push(&text[..split], &mut out);
            m.push(&text[split..], &mut out);
            m.finish(&mut out);
            assert_eq!(out, b"aaaa *** bbbb ***", "split at {split}");
        }
    }

    #[test]
    fn json_strings_of_a_sensitive_output_are_secrets() {
        let out = "{\n  \"Credentials\": {\"AccessKeyId\": \"ASIAQ7EXAMPLE\", \"N\": 1}\n}";
        let values = sensitive_values(out, &[]);
        assert!(values.iter().any(|v| v == b"ASIAQ7EXAMPLE"));
        assert!(
            !values.iter().any(|v| v == b"{"),
            "short lines are not secrets"
        );
        let s = SecretSet::new()
            .with(values.iter().map(Vec::as_slice))
            .unwrap();
        assert_eq!(s.mask_str("key ASIAQ7EXAMPLE"), "key ***");
    }

    #[test]
    fn a_document_that_cannot_be_serialised_is_not_clean() {
        struct Broken;
        impl serde::Serialize for Broken {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("broken"))
            }
        }
        assert!(!SecretSet::new().sweeps(&Broken), "the sweep fails closed");
        assert!(SecretSet::new().sweeps(&"fine"));
    }

    #[test]
    fn nothing_to_mask_passes_through() {
        let mut m = StreamMasker::new(Arc::new(SecretSet::new()));
        let mut out = Vec::new();
        m.push(b"hello", &mut out);
        assert_eq!(out, b"hello");
    }
}
