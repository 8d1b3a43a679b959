//! Property test of the stream masker: secrets of 4 B to 20 KiB, embedded in
//! random text in one of their encoded forms, cut into random chunks, never
//! come out of the masker. The expected forms are computed here
//! independently of the masker's own code.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use sentinel_engine::masker::{SecretSet, StreamMasker};

#[derive(Debug, Clone)]
enum Form {
    Raw,
    Base64 { before: Vec<u8>, after: Vec<u8> },
    Json,
    Url,
    Line(usize),
}

/// Secrets are expanded from a length and a seed (generating 20 KiB
/// element by element would dominate the test's time).
fn secret_strategy() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        6 => 4usize..64,
        3 => 64usize..2048,
        1 => 2048usize..=20 * 1024,
    ];
    (len, any::<u64>())
        .prop_map(|(n, seed)| {
            const SPECIAL: &[u8] = b"\n \"\\";
            let mut x = seed | 1;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let r = (x >> 32) as u32;
                    if r % 12 < 8 {
                        0x21 + (r / 12 % 94) as u8
                    } else {
                        SPECIAL[(r / 12 % SPECIAL.len() as u32) as usize]
                    }
                })
                .collect::<Vec<u8>>()
        })
        .prop_filter("secret with a long enough line", |s| {
            s.split(|b| *b == b'\n').any(|l| l.len() >= 4)
        })
}

fn form_strategy() -> impl Strategy<Value = Form> {
    prop_oneof![
        Just(Form::Raw),
        (
            proptest::collection::vec(any::<u8>(), 0..3),
            proptest::collection::vec(any::<u8>(), 0..3)
        )
            .prop_map(|(before, after)| Form::Base64 { before, after }),
        Just(Form::Json),
        Just(Form::Url),
        (0usize..64).prop_map(Form::Line),
    ]
}

/// The text a secret becomes in `form`, and the part of it that must not
/// survive masking.
fn encode(secret: &[u8], form: &Form) -> (Vec<u8>, Vec<u8>) {
    match form {
        Form::Raw => (secret.to_vec(), secret.to_vec()),
        Form::Base64 { before, after } => {
            let mut input = before.clone();
            input.extend_from_slice(secret);
            input.extend_from_slice(after);
            let text = STANDARD.encode(&input).into_bytes();
            // Characters fully determined by the secret's bits.
            let start_bit = before.len() * 8;
            let end_bit = start_bit + secret.len() * 8;
            let first = start_bit.div_ceil(6);
            let last = end_bit / 6;
            let core = text[first..last].to_vec();
            (text, core)
        }
        Form::Json => {
            let s = String::from_utf8_lossy(secret).into_owned();
            let q = serde_json::to_string(&s).unwrap();
            let inner = q.as_bytes()[1..q.len() - 1].to_vec();
            (q.into_bytes(), inner)
        }
        Form::Url => {
            let mut out = Vec::new();
            for &b in secret {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            (out.clone(), out)
        }
        Form::Line(i) => {
            let lines: Vec<&[u8]> = secret
                .split(|b| *b == b'\n')
                .filter(|l| l.len() >= 4)
                .collect();
            let line = lines[i % lines.len()].to_vec();
            (line.clone(), line)
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_secret_leaks_through_random_chunking(
        secret in secret_strategy(),
        form in form_strategy(),
        prefix in proptest::collection::vec(0x20u8..0x7f, 0..300),
        suffix in proptest::collection::vec(0x20u8..0x7f, 0..300),
        cuts in proptest::collection::vec(1usize..4096, 1..12),
        twice in any::<bool>(),
    ) {
        let set = Arc::new(SecretSet::new().with([secret.as_slice()]).unwrap());
        let (text, core) = encode(&secret, &form);
        prop_assume!(core.len() >= 4);
        let mut input = prefix.clone();
        input.extend_from_slice(&text);
        input.extend_from_slice(&suffix);
        if twice {
            input.extend_from_slice(&text);
        }

        // The prefix alone, masked: it may itself hold a secret line (a
        // random prefix once equalled a line of the secret), which must go.
        let mut alone = StreamMasker::new(set.clone());
        let mut prefix_out = Vec::new();
        alone.push(&prefix, &mut prefix_out);
        alone.finish(&mut prefix_out);

        let mut masker = StreamMasker::new(set);
        let mut out = Vec::new();
        let mut rest = input.as_slice();
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            masker.push(&rest[..n], &mut out);
            rest = &rest[n..];
            i += 1;
        }
        masker.finish(&mut out);

        prop_assert!(!contains(&out, &core), "a {form:?} form of a {}-byte secret leaked", secret.len());
        prop_assert!(contains(&out, b"***"));
        if prefix_out == prefix {
            prop_assert!(out.starts_with(&prefix[..prefix.len().min(1)]) || prefix.is_empty());
        }
    }
}
