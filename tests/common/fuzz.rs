//! Mutated requests for fuzzing the HTTP API: a deterministic generator and mutations of
//! valid bodies.

use serde_json::{json, Value};

/// A tiny deterministic generator (xorshift64*), so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

pub fn weird_value(rng: &mut Rng, hash: &str) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(1e308),
        5 => json!([]),
        6 => json!({}),
        7 => json!(""),
        8 => json!("\u{0}\u{ffff}<|im_start|>"),
        9 => json!(hash.to_uppercase()),
        10 => json!(format!("{}g", &hash[..63])),
        11 => json!(&hash[..32]),
        12 => json!("x".repeat(rng.below(3000))),
        _ => json!(hash),
    }
}

/// Mutates a valid request: drops, adds or retypes fields, nests sampling oddly.
pub fn mutate(rng: &mut Rng, mut body: Value, hash: &str) -> Value {
    let Value::Object(map) = &mut body else {
        return body;
    };
    for _ in 0..=rng.below(3) {
        let keys: Vec<String> = map.keys().cloned().collect();
        match rng.below(6) {
            0 if !keys.is_empty() => {
                map.remove(rng.pick(&keys).as_str());
            }
            1 if !keys.is_empty() => {
                let k = rng.pick(&keys).clone();
                map.insert(k, weird_value(rng, hash));
            }
            2 => {
                map.insert(
                    "sampling".into(),
                    json!({
                        "max_tokens": *rng.pick(&[json!(0), json!(1), json!(4), json!(100000), json!(-3), json!("8"), json!(null)]),
                        "temperature": *rng.pick(&[json!(0.0), json!(0.7), json!(5.0), json!(-0.1), json!(null), json!("hot")]),
                        "top_p": *rng.pick(&[json!(null), json!(0.0), json!(0.9), json!(1.5)]),
                        "seed": *rng.pick(&[json!(null), json!(7), json!(-7)]),
                    }),
                );
            }
            3 => {
                map.insert("policy".into(), json!({"keep_first": rng.below(4), "keep_last": rng.below(4), "summary_tokens": *rng.pick(&[0, 1, 9999])}));
            }
            4 => {
                map.insert("unexpected".into(), weird_value(rng, hash));
            }
            _ => {
                map.insert(
                    "delta_text".into(),
                    json!(format!("<|im_start|>user\nq{}<|im_end|>\n", rng.below(5))),
                );
            }
        }
    }
    body
}
