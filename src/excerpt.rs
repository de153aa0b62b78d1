//! Bounded excerpts of input for messages: whatever a user's file or option holds (a 1 GB line,
//! a 100 kB key, ten thousand class names), a message shows at most a few hundred characters
//! of it, with invisible and control characters made visible.

/// Characters of one value shown in a message.
pub const MAX_CHARS: usize = 80;
/// Items of a list shown in a message.
pub const MAX_ITEMS: usize = 12;
/// Bytes of a whole message printed at the binary's edge (a last bound behind the others).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `s` in double quotes, escaped (`\n`, `\u{feff}`, `\0`), cut after [`MAX_CHARS`] characters
/// with the number of bytes left out.
pub fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for (shown, (i, c)) in s.char_indices().enumerate() {
        if shown == MAX_CHARS {
            out.push_str(&format!("\"... ({} more bytes)", s.len() - i));
            return out;
        }
        if is_invisible(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.extend(c.escape_debug());
        }
    }
    out.push('"');
    out
}

/// Characters that print as nothing (or look like a space) yet make two strings differ.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00a0}' | '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}'
            | '\u{17b4}' | '\u{17b5}' | '\u{180e}' | '\u{2000}'..='\u{200f}' | '\u{2028}'..='\u{202f}'
            | '\u{205f}'..='\u{206f}' | '\u{3000}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fff8}'
    )
}

/// The first [`MAX_ITEMS`] items, each [`quoted`], joined by `, `, and how many more there are.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out: Vec<String> = items
        .iter()
        .take(MAX_ITEMS)
        .map(|s| quoted(s.as_ref()))
        .collect();
    if items.len() > MAX_ITEMS {
        out.push(format!("... ({} more)", items.len() - MAX_ITEMS));
    }
    out.join(", ")
}

/// A whole message cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how much was
/// left out.
pub fn message(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_MESSAGE_BYTES {
        return s.into();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &s[..end], s.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_invisible_characters_shown() {
        let long = "x".repeat(100_000);
        let q = quoted(&long);
        assert!(q.len() < 120, "{q}");
        assert!(q.ends_with(&format!("({} more bytes)", 100_000 - MAX_CHARS)));
        assert_eq!(quoted("\u{feff}pos\0\n"), "\"\\u{feff}pos\\0\\n\"");
        assert_eq!(quoted("plain"), "\"plain\"");
        let many: Vec<String> = (0..10_000).map(|i| format!("class{i}")).collect();
        let l = list(&many);
        assert!(l.len() < 300 && l.ends_with("(9988 more)"), "{l}");
        let m = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = message(&m);
        assert!(cut.len() < MAX_MESSAGE_BYTES + 40 && cut.ends_with("more bytes)"));
    }
}
