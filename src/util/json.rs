//! The one JSON string writer: the forwarded body's rebuilt keys and every log line use
//! it, so both escape exactly as serde_json does.

/// Where a JSON string is written: a log line (`String`) or a body (`Vec<u8>`).
pub trait Sink {
    fn put(&mut self, text: &str);
}

impl Sink for String {
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
}

/// The bytes serde_json escapes in a string: control characters, `"`, `\\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `value` as a quoted JSON string, escaped exactly as serde_json escapes it: most
/// values need no escape and are copied whole.
pub fn write_string(out: &mut impl Sink, value: &str) {
    out.put("\"");
    if !value.bytes().any(|b| NEEDS_ESCAPE[usize::from(b)]) {
        out.put(value);
    } else {
        write_escaped(out, value);
    }
    out.put("\"");
}

fn write_escaped(out: &mut impl Sink, value: &str) {
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.put(&value[start..i]);
        if escape.is_empty() {
            let mut code = *b"\\u0000";
            super::hex::encode_into(&[b], &mut code[4..]);
            // Only ASCII is written.
            out.put(std::str::from_utf8(&code).unwrap_or_default());
        } else {
            out.put(escape);
        }
        start = i + 1;
    }
    out.put(&value[start..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_exactly_as_serde_json_does() {
        let every_byte: String = (0u8..=0x7f).map(char::from).collect();
        for value in [
            "plain",
            "quote \" and \\ slash",
            "审批 \u{7f}",
            every_byte.as_str(),
        ] {
            let mut line = String::new();
            super::write_string(&mut line, value);
            let mut body = Vec::new();
            super::write_string(&mut body, value);
            let expected = serde_json::to_string(value).unwrap();
            assert_eq!(line, expected);
            assert_eq!(body, expected.as_bytes());
        }
    }
}
