//! One error-chain formatter for every crate: an error and its sources on one line, as the
//! agent sends them to the host, the monitor records them and the CLIs print them.

/// `e` and each of its sources, `: `-separated, on one line (newlines become spaces), as
/// anyhow's `{:#}` shows a chain.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn chain_joins_sources_on_one_line() {
        let e = E(
            "reading x",
            Some(Box::new(E("bad\nframe", Some(Box::new(E("eof", None)))))),
        );
        assert_eq!(chain(&e), "reading x: bad frame: eof");
        assert_eq!(chain(&E("alone", None)), "alone");
    }
}
