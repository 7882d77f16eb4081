//! The W3C trace context of a task or saga, parsed and printed (pure: no clock, no I/O).
//!
//! A `traceparent` arrives from producers in any language (raw `XADD`s included), so the
//! parser is strict where the W3C Trace Context spec is (lowercase hex, no all-zero ids,
//! version `ff` invalid) and forward-compatible where it asks to be (a version above 00
//! may carry more fields). Anything it refuses is kept on the task untouched but starts
//! no span: a producer's malformed header must never fail or stall a task.

/// A parsed `traceparent`: trace id, parent (span) id and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// 16-byte trace id, never 0.
    pub trace_id: u128,
    /// 8-byte id of the span that is the parent of whatever continues this context.
    pub span_id: u64,
    /// The `sampled` bit of the trace flags.
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` when it is not a valid one.
    pub(crate) fn parse(s: &str) -> Option<TraceContext> {
        let b = s.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&b[0..2])? as u8;
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = hex(&b[3..35])?;
        let span_id = hex(&b[36..52])? as u64;
        let flags = hex(&b[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` (version 00) that continues this context. Written digit by
    /// digit: `format!` with padded hex cost ~1,700 instructions, and every enqueue makes
    /// one (issue 14.1).
    pub(crate) fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, self.trace_id, 32);
        s.push('-');
        push_hex(&mut s, u128::from(self.span_id), 16);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// A new span of the same trace, with the same sampling decision.
    pub(crate) fn child(&self, span_id: u64) -> TraceContext {
        TraceContext { span_id, ..*self }
    }
}

/// Appends the low `digits` hex digits of `v`, lowercase, zero-padded.
fn push_hex(s: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        s.push(HEX[((v >> (4 * i)) & 0xf) as usize] as char);
    }
}

/// Lowercase hex digits only (the spec forbids uppercase), up to 32 of them. Works on
/// bytes: slicing the text could split a multi-byte character and panic.
fn hex(b: &[u8]) -> Option<u128> {
    b.iter().try_fold(0u128, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(d))
    })
}

/// The sampling decision for a trace that starts here: kept when the trace id's low 64
/// bits fall under `ratio` of the range (as OpenTelemetry's `TraceIdRatioBased` does, so
/// every process that sees the id decides alike).
pub(crate) fn sample(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

/// A random id that is never 0 (W3C: an all-zero trace or span id is invalid).
pub(crate) fn new_span_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// A random trace id that is never 0.
pub(crate) fn new_trace_id() -> u128 {
    rand::random::<u128>().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_spec_example() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        assert!(t.sampled);
        let u =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!u.sampled);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-aa-bb-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn sampling_follows_the_ratio() {
        assert!(sample(12345, 1.0));
        assert!(!sample(12345, 0.0));
        let kept = (0..10_000u64)
            .filter(|i| sample(u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 0.25))
            .count();
        assert!((2_000..3_000).contains(&kept), "{kept}");
    }

    proptest! {
        #[test]
        fn printing_then_parsing_is_the_identity(
            trace_id in 1u128.., span_id in 1u64.., sampled: bool
        ) {
            let t = TraceContext { trace_id, span_id, sampled };
            prop_assert_eq!(TraceContext::parse(&t.traceparent()), Some(t));
            // The hand-written digits are what `format!` writes, zero padding included.
            prop_assert_eq!(
                t.traceparent(),
                format!("00-{:032x}-{:016x}-{:02x}", t.trace_id, t.span_id, u8::from(t.sampled))
            );
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(s in "\\PC{0,80}") {
            let _ = TraceContext::parse(&s);
        }
    }
}
