//! Everything the CLI prints goes through here, for two reasons.
//!
//! - **Broken pipes** (issue 10.17): `println!` panics when stdout is closed, so
//!   `taskstream saga show ID | head` ended in a panic message. The [`outln!`] and [`out!`]
//!   macros return the write error instead (they use `?`), and [`super::main`] turns a
//!   `BrokenPipe` anywhere in an error chain into a quiet exit 0, in that one place.
//! - **Producer-controlled bytes** (issue 10.16): dead letters, task types, saga errors
//!   are written by producers and handlers, and printing them raw lets them drive the
//!   operator's terminal (escape sequences can rewrite the screen, hide lines, set the
//!   title). [`escape_controls`] shows control and bidi-override characters as escapes.
//!   JSON output needs nothing: serde_json escapes control characters itself.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

/// Writes one line to stdout; `?`s the error out of the calling function.
macro_rules! outln {
    () => { $crate::cli::output::write(format_args!("\n"))? };
    ($($t:tt)*) => { $crate::cli::output::write(format_args!("{}\n", format_args!($($t)*)))? };
}

/// Writes to stdout without a newline; `?`s the error out of the calling function.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::output::write(format_args!($($t)*))? };
}

pub(crate) use {out, outln};

/// Writes `args` to stdout.
pub(crate) fn write(args: fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

/// Flushes stdout (for progress lines without a newline).
pub(crate) fn flush() -> std::io::Result<()> {
    std::io::stdout().lock().flush()
}

/// True when `e` was caused by writing to a closed pipe.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn needs_escape(c: char, keep_newlines: bool) -> bool {
    match c {
        '\n' | '\t' if keep_newlines => false,
        // Bidi overrides and isolates reorder what the terminal shows ("Trojan Source").
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        c => c.is_control(),
    }
}

/// `s` with control characters (C0, DEL, C1 — ESC and CSI among them) and bidi overrides
/// shown as `\x1b` / `\u{202e}` escapes, a backslash doubled when anything is escaped, so
/// producer-written text cannot drive the terminal. With `keep_newlines`, `\n` and `\t`
/// stay (for multi-line renderings).
pub(crate) fn escape_controls(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' if !keep_newlines => o.push_str("\\n"),
            '\t' if !keep_newlines => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if needs_escape(c, keep_newlines) && (c as u32) < 0x100 => {
                o.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c, keep_newlines) => o.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => o.push(c),
        }
    }
    Cow::Owned(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(
            escape_controls("failed: permanent error", false),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape_controls("a\\b", false), "a\\b");
        assert_eq!(escape_controls("line 1\nline 2", true), "line 1\nline 2");
    }

    #[test]
    fn terminal_escapes_are_shown_not_sent() {
        assert_eq!(
            escape_controls("\x1b[2J\x1b]0;owned\x07ok", false),
            "\\x1b[2J\\x1b]0;owned\\x07ok"
        );
        assert_eq!(escape_controls("a\nb\r", false), "a\\nb\\r");
        assert_eq!(escape_controls("\u{9b}31m", false), "\\x9b31m");
        assert_eq!(escape_controls("abc\u{202e}fed", false), "abc\\u{202e}fed");
        assert_eq!(escape_controls("x\\\x1b", false), "x\\\\\\x1b");
        assert_eq!(escape_controls("a\n\x1bb", true), "a\n\\x1bb");
        assert!(!escape_controls("\x7f", false).contains('\x7f'));
    }
}
