//! Every setting of every builder states its default in its documentation ("Defaults are the
//! product"): a setter added without one fails here. The sources are read as text, so the check
//! needs no parser and sees exactly what rustdoc shows.

/// A builder: its source, and the `impl` block of its setters.
struct Builder {
    source: &'static str,
    name: &'static str,
}

const BUILDERS: &[Builder] = &[
    Builder {
        source: include_str!("../crates/rpc-client/src/config.rs"),
        name: "ChannelBuilder",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/policy.rs"),
        name: "RetryPolicy",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/policy.rs"),
        name: "HedgePolicy",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/policy.rs"),
        name: "RetryBudget",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/balance/breaker.rs"),
        name: "CircuitBreaker",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/balance/outlier.rs"),
        name: "OutlierDetection",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/balance/outlier.rs"),
        name: "SuccessRate",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/balance/policy.rs"),
        name: "PeakEwma",
    },
    Builder {
        source: include_str!("../crates/rpc-client/src/balance/policy.rs"),
        name: "ConsistentHash",
    },
    Builder {
        source: include_str!("../crates/rpc-server/src/server.rs"),
        name: "ServerBuilder",
    },
    Builder {
        source: include_str!("../crates/rpc-server/src/dedupe.rs"),
        name: "DedupeConfig",
    },
];

/// Methods of those blocks that are not settings, or switches that turn off a setting whose own
/// setter documents the default.
fn exempt(method: &str) -> bool {
    matches!(method, "build" | "try_build" | "register" | "add_service")
        || method.starts_with("disable_")
        || method.starts_with("unlimited_")
        || method.starts_with("without_")
}

/// `(method, its doc comment)` for each `pub fn name(mut self` / `(self` of `impl name {`.
fn setters(builder: &Builder) -> Vec<(String, String)> {
    let start = builder
        .source
        .find(&format!("\nimpl {} {{", builder.name))
        .unwrap_or_else(|| panic!("no `impl {} {{` block", builder.name));
    let block = &builder.source[start..];
    let block = &block[..block.find("\n}\n").expect("the block ends")];
    let mut doc = String::new();
    let mut found = Vec::new();
    for line in block.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("///") {
            doc.push_str(text);
            doc.push(' ');
            continue;
        }
        let signature = line
            .strip_prefix("pub fn ")
            .or_else(|| line.strip_prefix("pub const fn "));
        if let Some(rest) = signature {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let after = &rest[name.len()..];
            if after.starts_with("(mut self") || after.starts_with("(self") {
                found.push((name, doc.clone()));
            }
        }
        if !line.starts_with("#[") {
            doc.clear();
        }
    }
    found
}

#[test]
fn every_builder_setting_documents_its_default() {
    let mut missing = Vec::new();
    let mut checked = 0;
    for builder in BUILDERS {
        let setters = setters(builder);
        assert!(!setters.is_empty(), "no setters found for {}", builder.name);
        for (method, doc) in setters {
            if exempt(&method) {
                continue;
            }
            checked += 1;
            if !doc.to_lowercase().contains("default") {
                missing.push(format!("{}::{method}", builder.name));
            }
        }
    }
    assert!(
        checked >= 40,
        "only {checked} settings found: is the parsing still right?"
    );
    assert!(
        missing.is_empty(),
        "settings whose documentation states no default: {missing:?}"
    );
}
