//! `--exclude` patterns: shell-style globs matched against a store path's name (the
//! part after `<hash>-`, e.g. `hello-2.12.1` or `source`). `*` matches any run of
//! characters (a name has no `/`), `?` one character, `[abc]`, `[a-z]` and `[!a-z]`
//! one of a set; `\` takes the next character literally. Pure: no filesystem.

/// One pattern, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// Check a pattern: an unterminated `[` set or a trailing `\` is refused,
    /// naming the pattern.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("an exclude pattern must not be empty".into());
        }
        if pattern.contains('/') {
            return Err(format!(
                "exclude pattern '{pattern}' contains '/': it matches the store path's name \
                 after the hash, e.g. '*-source' or 'linux-*'"
            ));
        }
        let p: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        while i < p.len() {
            match p[i] {
                '\\' if i + 1 == p.len() => {
                    return Err(format!("exclude pattern '{pattern}' ends in a lone '\\'"))
                }
                '\\' => i += 2,
                '[' => match set_end(&p, i) {
                    Some(end) => i = end + 1,
                    None => {
                        return Err(format!(
                            "exclude pattern '{pattern}' has a '[' without its ']'"
                        ))
                    }
                },
                _ => i += 1,
            }
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does `name` (a store path's name, without the hash) match?
    pub fn matches(&self, name: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let n: Vec<char> = name.chars().collect();
        match_at(&p, &n)
    }
}

/// The first pattern in `globs` that `name` matches.
pub fn first_match<'a>(globs: &'a [Glob], name: &str) -> Option<&'a Glob> {
    globs.iter().find(|g| g.matches(name))
}

/// Index of the `]` closing the set that opens at `p[open]`.
fn set_end(p: &[char], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if p.get(i) == Some(&'!') || p.get(i) == Some(&'^') {
        i += 1;
    }
    // A `]` right after the opening is a member, as in the shell.
    if p.get(i) == Some(&']') {
        i += 1;
    }
    while i < p.len() {
        if p[i] == ']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Does the set at `p[open..=end]` contain `c`?
fn set_contains(p: &[char], open: usize, end: usize, c: char) -> bool {
    let mut i = open + 1;
    let negated = matches!(p[i], '!' | '^');
    if negated {
        i += 1;
    }
    let mut hit = false;
    while i < end {
        let lo = p[i];
        if i + 2 < end && p[i + 1] == '-' {
            if lo <= c && c <= p[i + 2] {
                hit = true;
            }
            i += 3;
        } else {
            if lo == c {
                hit = true;
            }
            i += 1;
        }
    }
    hit != negated
}

/// Iterative wildcard matching with one backtrack point for the last `*`.
fn match_at(p: &[char], n: &[char]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => {
                let end = set_end(p, pi).unwrap_or(p.len() - 1);
                set_contains(p, pi, end, n[ni]).then_some(end + 1)
            }
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == n[ni]).then_some(pi + 2),
            Some(&c) => (c == n[ni]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ni += 1;
            }
            None => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).unwrap().matches(n)
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(m("*-source", "nixpkgs-source"));
        assert!(m("*-source", "-source"));
        assert!(!m("*-source", "source"));
        assert!(!m("*-source", "nixpkgs-source-2"));
        assert!(m("*.iso", "nixos-24.05.iso"));
        assert!(m("linux-*", "linux-6.6.1"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("hello-2.1?", "hello-2.12"));
        assert!(!m("hello-2.1?", "hello-2.1"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(m("**x", "abx"));
    }

    #[test]
    fn sets_ranges_and_escapes() {
        assert!(m("v[0-9]*", "v1.2"));
        assert!(!m("v[0-9]*", "vx"));
        assert!(m("v[!0-9]*", "vx"));
        assert!(!m("v[!0-9]*", "v1"));
        assert!(m("[abc]", "b"));
        assert!(!m("[abc]", "d"));
        assert!(m("[]x]", "]"));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("a[*]", "a*"));
    }

    #[test]
    fn bad_patterns_name_themselves() {
        assert!(Glob::new("").is_err());
        let e = Glob::new("foo[ab").unwrap_err();
        assert!(e.contains("'foo[ab'") && e.contains("']'"), "{e}");
        let e = Glob::new("x\\").unwrap_err();
        assert!(e.contains("'x\\'"), "{e}");
        let e = Glob::new("/nix/store/*-source").unwrap_err();
        assert!(e.contains("after the hash"), "{e}");
    }

    #[test]
    fn first_match_names_the_pattern() {
        let globs = vec![Glob::new("*.iso").unwrap(), Glob::new("*-source").unwrap()];
        assert_eq!(
            first_match(&globs, "x-source").map(Glob::as_str),
            Some("*-source")
        );
        assert_eq!(first_match(&globs, "hello"), None);
    }
}
