//! The rule every Proteus resource name follows: topics, consumer groups and members, flag
//! sets, projections. One rule, so a name valid in one place is valid in all, and URLs, file
//! names and metrics labels never need escaping.

/// Checks `text` is 1 to `bytes_max` bytes of ASCII letters, digits, `.`, `_` and `-`, starting
/// with a letter or a digit. The error is the reason, worded to follow "invalid NAME: ".
pub fn check_name(text: &str, bytes_max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.len() > bytes_max {
        return Err(format!(
            "it is {} bytes; a name is at most {bytes_max} bytes",
            text.len()
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{bad:?} is not allowed; use letters, digits, '.', '_' and '-'"
        ));
    }
    if !text.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("it must start with a letter or a digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_ascii_identifiers() {
        assert_eq!(check_name("orders.v2_eu-1", 20), Ok(()));
        assert_eq!(check_name("", 20), Err("it is empty".into()));
        assert!(
            check_name("abc", 2)
                .unwrap_err()
                .contains("at most 2 bytes")
        );
        assert!(
            check_name("a b", 20)
                .unwrap_err()
                .contains("' ' is not allowed")
        );
        assert!(check_name("é", 20).unwrap_err().contains("not allowed"));
        assert!(
            check_name("-a", 20)
                .unwrap_err()
                .contains("start with a letter")
        );
    }
}
