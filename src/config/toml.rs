//! The config file's syntax: a strict subset of TOML (`key = value` lines, `#`
//! comments, an optional `[narpush]` table; basic and literal strings, decimal
//! integers, booleans, and arrays of those), parsed by hand so that every error
//! names its line. What the keys mean is `config`'s business.

/// A value in the TOML subset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Array(Vec<Value>),
}

impl Value {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
        }
    }
}

pub(crate) type TomlError = (usize, String);

/// Parse the TOML subset: `key = value` lines, `#` comments, an optional `[narpush]`
/// table header; values are basic or literal strings, integers, booleans and
/// (possibly multi-line) arrays of those. Returns (key, value, line) in file order.
pub(crate) fn parse(text: &str) -> std::result::Result<Vec<(String, Value, usize)>, TomlError> {
    let mut p = Toml {
        s: text.as_bytes(),
        text,
        pos: 0,
        line: 1,
    };
    let mut out = Vec::new();
    loop {
        p.skip_space();
        match p.peek() {
            None => return Ok(out),
            Some(b'\n') | Some(b'\r') | Some(b'#') => p.end_of_line()?,
            Some(b'[') => {
                let line = p.line;
                p.pos += 1;
                p.skip_space();
                let name = p.bare_key();
                p.skip_space();
                if p.peek() != Some(b']') || name != "narpush" {
                    return Err((line, "the only table allowed is [narpush]".into()));
                }
                p.pos += 1;
                p.end_of_line()?;
            }
            Some(_) => {
                let line = p.line;
                let key = p.bare_key();
                if key.is_empty() {
                    return Err((
                        line,
                        "expected a key (letters, digits, '-' and '_') or a comment".into(),
                    ));
                }
                p.skip_space();
                if p.peek() != Some(b'=') {
                    return Err((line, format!("expected '=' after key '{key}'")));
                }
                p.pos += 1;
                p.skip_space();
                let value = p.value()?;
                p.end_of_line()?;
                out.push((key, value, line));
            }
        }
    }
}

struct Toml<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    line: usize,
}

impl Toml<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// After a value or header: optional spaces and comment, then newline or end.
    fn end_of_line(&mut self) -> std::result::Result<(), TomlError> {
        self.skip_space();
        if self.peek() == Some(b'#') {
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.pos += 1;
            }
        }
        if self.peek() == Some(b'\r') {
            self.pos += 1;
        }
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
                Ok(())
            }
            Some(_) => Err((
                self.line,
                format!("unexpected '{}' after the value", self.rest_of_line()),
            )),
        }
    }

    fn rest_of_line(&self) -> &str {
        let rest = &self.text[self.pos..];
        rest.split(['\n', '\r']).next().unwrap_or("").trim_end()
    }

    fn bare_key(&mut self) -> String {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            self.pos += 1;
        }
        self.text[start..self.pos].to_string()
    }

    /// Whitespace, newlines and comments inside an array.
    fn skip_array_space(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'#') => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn value(&mut self) -> std::result::Result<Value, TomlError> {
        let line = self.line;
        match self.peek() {
            Some(b'"') => self.basic_string().map(Value::Str),
            Some(b'\'') => {
                self.pos += 1;
                let start = self.pos;
                while !matches!(self.peek(), None | Some(b'\'' | b'\n')) {
                    self.pos += 1;
                }
                if self.peek() != Some(b'\'') {
                    return Err((line, "unterminated string: missing closing '".into()));
                }
                let s = self.text[start..self.pos].to_string();
                self.pos += 1;
                Ok(Value::Str(s))
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_array_space();
                    match self.peek() {
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        None => return Err((line, "unterminated array: missing ']'".into())),
                        _ => {}
                    }
                    let item = self.value()?;
                    if matches!(item, Value::Array(_)) {
                        return Err((self.line, "nested arrays are not supported".into()));
                    }
                    items.push(item);
                    self.skip_array_space();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {}
                        None => return Err((line, "unterminated array: missing ']'".into())),
                        Some(_) => {
                            return Err((
                                self.line,
                                format!(
                                    "expected ',' or ']' in array, found '{}'",
                                    self.rest_of_line()
                                ),
                            ))
                        }
                    }
                }
            }
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'_')
                {
                    self.pos += 1;
                }
                let word = &self.text[start..self.pos];
                match word {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "" => Err((
                        line,
                        format!("expected a value, found '{}'", self.rest_of_line()),
                    )),
                    _ => parse_int(word).map(Value::Int).ok_or_else(|| {
                        (
                            line,
                            format!("'{word}' is not a value; strings need quotes: \"{word}\""),
                        )
                    }),
                }
            }
        }
    }

    fn basic_string(&mut self) -> std::result::Result<String, TomlError> {
        let line = self.line;
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(c) = rest.chars().next() else {
                return Err((line, "unterminated string: missing closing \"".into()));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => return Err((line, "unterminated string: missing closing \"".into())),
                '\\' => {
                    let e = self
                        .peek()
                        .ok_or((line, "unterminated string".to_string()))?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'u' | b'U' => {
                            let n = if e == b'u' { 4 } else { 8 };
                            let hex = self.text.get(self.pos..self.pos + n).unwrap_or("");
                            let ch = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                            let ch = ch.ok_or((
                                line,
                                format!("bad unicode escape \\{}{hex}", e as char),
                            ))?;
                            out.push(ch);
                            self.pos += n;
                        }
                        _ => {
                            return Err((
                                line,
                                format!("unknown escape '\\{}' in string", e as char),
                            ))
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// A TOML decimal integer: optional sign, digits, single underscores between digits.
fn parse_int(word: &str) -> Option<i64> {
    let digits = word.strip_prefix(['+', '-']).unwrap_or(word);
    let ok = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.bytes().all(|c| c.is_ascii_digit() || c == b'_')
        && (digits == "0" || !digits.starts_with('0'));
    if !ok {
        return None;
    }
    word.replace('_', "").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_subset_values() {
        let v = parse(
            "[narpush]\r\na = \"x\\\"y\\u00e9\\n\" # c\nb = 'C:\\raw'\nc = -1_000\nd = [ ]\ne = [\"p\", 'q',]\nf = false\n",
        )
        .unwrap();
        let want = vec![
            ("a".to_string(), Value::Str("x\"y\u{e9}\n".into()), 2),
            ("b".to_string(), Value::Str("C:\\raw".into()), 3),
            ("c".to_string(), Value::Int(-1000), 4),
            ("d".to_string(), Value::Array(vec![]), 5),
            (
                "e".to_string(),
                Value::Array(vec![Value::Str("p".into()), Value::Str("q".into())]),
                6,
            ),
            ("f".to_string(), Value::Bool(false), 7),
        ];
        assert_eq!(v, want);
        for bad in [
            "n = 01",
            "n = 1__0",
            "n = _1",
            "n = 1_",
            "n = 0x10",
            "n = 1.5",
            "s = \"\\q\"",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
