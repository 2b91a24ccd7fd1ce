//! Text for the two places it ends up: the card Feishu shows the approver, and the
//! operator's log line. Both are bounded, whatever the caller or the legacy system sent.

/// Longest message Feishu is given, in characters.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// Makes text fit for Feishu's card: markup removed, control characters and
/// runs of white space folded to one space, at most 200 characters.
pub fn clean(text: &str) -> Option<String> {
    fold(text).map(|m| clip(&m))
}

/// [`clean`] without the cut to 200 characters (the work stays bounded): secrets are looked
/// for in what this returns, since a cut first could leave part of one behind.
pub(crate) fn fold(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(4 * MAX_MESSAGE_CHARS));
    let mut in_tag = false;
    let mut pending_space = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                pending_space = true;
            }
            _ if in_tag => {}
            // A stray `>` is markup too (a tag cut in half, an arrow Feishu would render).
            '>' => pending_space = true,
            c if c.is_whitespace() || c.is_control() => pending_space = true,
            c => {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push(c);
            }
        }
        if out.len() > 8 * MAX_MESSAGE_CHARS {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

pub(crate) fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

/// The most of a field from the callback a log line carries, in bytes: Feishu's ids are
/// under 64, and a line must not grow with whatever a caller puts in a field.
const MAX_LOGGED_FIELD_BYTES: usize = 128;

/// `text` cut to [`MAX_LOGGED_FIELD_BYTES`] at a character boundary; span
/// attributes are cut alike.
pub fn bounded(text: &str) -> &str {
    let mut end = text.len().min(MAX_LOGGED_FIELD_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Every occurrence in `text` of any of `secrets` replaced by `<redacted>`: the one
/// scrubber for log details and error messages that might repeat a credential.
pub fn redact(text: &mut String, secrets: &[String]) {
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret.as_str()) {
            *text = text.replace(secret.as_str(), "<redacted>");
        }
    }
}

/// A URL as logs and `check-config` show it: whatever precedes `@` in its authority is a
/// credential, and so may be any query value (`?access_token=…`, `?api_key=…`); the
/// parameters' names stay, to tell one URL from another.
pub fn shown_url(url: &http::Uri) -> String {
    let mut out = String::new();
    if let Some(scheme) = url.scheme_str() {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(authority) = url.authority() {
        match authority.as_str().rsplit_once('@') {
            Some((_, host)) => {
                out.push_str("<redacted>@");
                out.push_str(host);
            }
            None => out.push_str(authority.as_str()),
        }
    }
    out.push_str(url.path());
    if let Some(query) = url.query() {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push_str("=<redacted>");
                }
                None => out.push_str("<redacted>"),
            }
        }
    }
    out
}

/// `%XX` decoding, so values may hold commas (`%2C`) and other separators.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_runs_of_white_space_are_folded_and_long_text_is_cut() {
        assert_eq!(
            clean("<b>Task</b>\n\tlocked\u{7}  by <i>admin</i>").as_deref(),
            Some("Task locked by admin")
        );
        let long = clean(&"审".repeat(1000)).unwrap();
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS);
        assert!(long.ends_with('…'));
        assert_eq!(clean(">>").as_deref(), None);
    }

    #[test]
    fn logged_fields_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("task-1"), "task-1");
        let long = "审".repeat(100);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_LOGGED_FIELD_BYTES && cut.len() > MAX_LOGGED_FIELD_BYTES - 3);
        assert!(long.starts_with(cut));
        assert_eq!(bounded(&"x".repeat(1000)).len(), MAX_LOGGED_FIELD_BYTES);
    }

    #[test]
    fn shown_urls_hide_credentials_and_query_values() {
        let shown = |u: &str| shown_url(&u.parse().unwrap());
        assert_eq!(
            shown("https://user:pw@collector.example:4318/v1/traces?api_key=k1&flag"),
            "https://<redacted>@collector.example:4318/v1/traces?api_key=<redacted>&<redacted>"
        );
        assert_eq!(
            shown("http://127.0.0.1:8080/approve?access_token=abc"),
            "http://127.0.0.1:8080/approve?access_token=<redacted>"
        );
        assert_eq!(shown("http://legacy:8080/api"), "http://legacy:8080/api");
    }
}
