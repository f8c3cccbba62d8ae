//! Semantic-version precedence for definition versions, computed in Rust so that every backend
//! agrees on what "the latest version" is (`1.10.0 > 1.9.0`, `1.0.0-rc.1 < 1.0.0`).
//!
//! Accepted syntax: `MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]`, numeric components made of
//! ASCII digits (missing ones count as 0), pre-release identifiers made of `[0-9A-Za-z-]`.
//! Precedence follows semver.org §11. Build metadata does not change precedence.
//!
//! [`compare`] is a total order on all strings: versions that do not parse sort below every
//! valid one, and ties in precedence (`1.0.0+a` / `1.0.0+b`, `1.2` / `1.2.0`, two invalid
//! strings) are broken by plain string order, so that sorting is deterministic.

use std::cmp::Ordering;

struct Parsed<'a> {
    core: [u64; 3],
    pre: Option<&'a str>,
}

fn parse(v: &str) -> Option<Parsed<'_>> {
    let without_build = match v.split_once('+') {
        Some((head, build)) => {
            if !identifiers_ok(build) {
                return None;
            }
            head
        }
        None => v,
    };
    let (core_text, pre) = match without_build.split_once('-') {
        Some((core, pre)) => {
            if !identifiers_ok(pre) {
                return None;
            }
            (core, Some(pre))
        }
        None => (without_build, None),
    };
    let mut core = [0u64; 3];
    for (i, part) in core_text.split('.').enumerate() {
        if i == 3 || !is_numeric(part) {
            return None;
        }
        core[i] = part.parse().ok()?;
    }
    Some(Parsed { core, pre })
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn identifiers_ok(s: &str) -> bool {
    s.split('.')
        .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Numeric identifiers of any length, compared as numbers.
fn compare_numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn compare_pre(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        // A pre-release has lower precedence than the release.
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => {
            let mut xs = a.split('.');
            let mut ys = b.split('.');
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(x), Some(y)) => {
                        let ord = match (is_numeric(x), is_numeric(y)) {
                            (true, true) => compare_numeric(x, y),
                            (true, false) => Ordering::Less,
                            (false, true) => Ordering::Greater,
                            (false, false) => x.cmp(y),
                        };
                        if ord != Ordering::Equal {
                            return ord;
                        }
                    }
                }
            }
        }
    }
}

/// Semver precedence of two version strings; a total order (see the module docs).
pub fn compare(a: &str, b: &str) -> Ordering {
    let precedence = match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.core.cmp(&y.core).then_with(|| compare_pre(x.pre, y.pre)),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    precedence.then_with(|| a.cmp(b))
}

/// Whether `v` is a version this module understands (otherwise it sorts below all valid ones).
pub fn is_valid(v: &str) -> bool {
    parse(v).is_some()
}

/// The highest version of a set, by [`compare`].
pub fn latest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().max_by(|a, b| compare(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_components_compare_as_numbers() {
        assert_eq!(compare("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare("1.9.10", "1.9.9"), Ordering::Greater);
        assert_eq!(compare("10.0.0", "9.99.99"), Ordering::Greater);
        assert_eq!(compare("0.0.1", "0.0.1"), Ordering::Equal);
        assert_eq!(
            compare("18446744073709551615.0.0", "1.0.0"),
            Ordering::Greater
        );
    }

    #[test]
    fn pre_releases_follow_semver_precedence() {
        // The example chain of semver.org §11.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1-0",
            "1.0.1",
        ];
        for pair in chain.windows(2) {
            assert_eq!(
                compare(pair[0], pair[1]),
                Ordering::Less,
                "{} < {}",
                pair[0],
                pair[1]
            );
            assert_eq!(
                compare(pair[1], pair[0]),
                Ordering::Greater,
                "{} > {}",
                pair[1],
                pair[0]
            );
        }
        assert_eq!(compare("1.0.0-rc.10", "1.0.0-rc.9"), Ordering::Greater);
    }

    #[test]
    fn build_metadata_does_not_change_precedence_but_order_is_total() {
        assert_eq!(compare("1.0.0+build.2", "1.0.1"), Ordering::Less);
        assert_eq!(compare("1.0.0+build.2", "1.0.0-rc.1"), Ordering::Greater);
        // Equal precedence: string order breaks the tie.
        assert_eq!(compare("1.0.0+a", "1.0.0+b"), Ordering::Less);
    }

    #[test]
    fn short_and_invalid_versions() {
        assert!(is_valid("1"));
        assert!(is_valid("1.2"));
        assert!(is_valid("1.2.3-rc.1+sha.abc"));
        assert_eq!(compare("1.10", "1.9.5"), Ordering::Greater);
        for bad in [
            "",
            "v1.0.0",
            "1.0.0.0",
            "1..0",
            "1.0.0-",
            "1.0.0-a..b",
            "1.0.0+",
            "latest",
            "1.x",
        ] {
            assert!(!is_valid(bad), "{bad:?} should be invalid");
            assert_eq!(
                compare(bad, "0.0.0-0"),
                Ordering::Less,
                "{bad:?} sorts below valid versions"
            );
        }
        assert_eq!(compare("abc", "abd"), Ordering::Less);
    }

    #[test]
    fn latest_picks_the_highest() {
        assert_eq!(
            latest(["1.2.0", "1.10.0", "1.9.0", "2.0.0-rc.1", "1.10.0-rc.1"]),
            Some("2.0.0-rc.1")
        );
        assert_eq!(latest(["2.0.0-rc.1", "2.0.0", "2.0.0-rc.2"]), Some("2.0.0"));
        assert_eq!(latest(std::iter::empty::<&str>()), None);
    }
}

/// Definitions in list order: by namespace, then name, then newest version first.
pub fn sort_definitions(defs: &mut [crate::Definition]) {
    defs.sort_by(|a, b| {
        a.namespace
            .cmp(&b.namespace)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| compare(&b.version, &a.version))
    });
}
