//! Literal event-filter values as regular expressions.
//!
//! dsl-reference.md, Event Filter: `with` is "a name/value mapping of the attributes filtered
//! events must define. Supports both regular expressions and runtime expressions." The spec
//! gives no marker that tells a regular expression from a plain value, so kflow reads every
//! literal string of a `with` mapping as both: it matches a text that is equal to it, or that
//! the regular expression matches *as a whole* (`com\.example\..*` matches
//! `com.example.order`; `order` matches neither `reorder` nor `order.created`). The syntax is
//! that of the `regex` crate (Perl-like, no look-around, no back-references); matching takes
//! time linear in the text, so a pattern cannot make matching hang.
//!
//! Only strings written in the definition are patterns: a value computed by a runtime
//! expression is compared as it is (dsl.md forbids evaluating expression syntax found in data,
//! regular expressions included).

use std::cell::RefCell;
use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

/// Largest compiled program a pattern may have (bytes); bounds the memory of one pattern.
const SIZE_LIMIT: usize = 1 << 20;
/// Patterns compiled per thread and kept for reuse; the cache is emptied when it is full.
const CACHE_ENTRIES: usize = 512;

fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => s
                .lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .map(|l| l.trim_start_matches("error:").trim().to_string())
                .unwrap_or(s),
            regex::Error::CompiledTooBig(n) => {
                format!("the compiled pattern is larger than the limit of {n} bytes")
            }
            other => other.to_string(),
        })
}

/// Whether `pattern` is a valid regular expression; `Err` says what is wrong with it.
pub fn check(pattern: &str) -> Result<(), String> {
    compile(pattern).map(|_| ())
}

thread_local! {
    static CACHE: RefCell<HashMap<String, Option<Regex>>> = RefCell::new(HashMap::new());
}

/// Whether `text` equals `pattern`, or the regular expression `pattern` matches all of `text`.
/// A pattern that is not a valid regular expression matches only a text equal to it.
pub fn matches(pattern: &str, text: &str) -> bool {
    if pattern == text {
        return true;
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if !cache.contains_key(pattern) {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(pattern.to_string(), compile(pattern).ok());
        }
        cache
            .get(pattern)
            .and_then(Option::as_ref)
            .is_some_and(|re| re.is_match(text))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_or_whole_match() {
        assert!(matches("com.example.order", "com.example.order"));
        assert!(matches(r"com\.example\..*", "com.example.refund"));
        assert!(matches("com.example.(order|refund)", "com.example.refund"));
        assert!(!matches("order", "reorder"));
        assert!(!matches("order", "order.created"));
        assert!(!matches(r"com\.example\..*", "org.example.order"));
        // A literal that is not a valid pattern still matches itself.
        assert!(matches("C++(", "C++("));
        assert!(!matches("C++(", "C"));
        // Flags work inside the group.
        assert!(matches("(?i)ORDER", "order"));
    }

    #[test]
    fn check_reports_the_problem() {
        assert!(check(r"com\.example\..*").is_ok());
        let e = check("order(").unwrap_err();
        assert!(e.contains("unclosed group"), "{e}");
        assert!(check("a{2,1}").is_err());
        let e = check("(a{1000}){1000}").unwrap_err();
        assert!(e.contains("limit"), "{e}");
    }
}
