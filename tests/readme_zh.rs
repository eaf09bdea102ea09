//! README.zh.md keeps in step with README.md: every section heading of the English README has
//! its counterpart, at the same level and in the same order (each Chinese heading ends with
//! `<!-- the English heading -->`), and every servers.toml key and command the English README
//! documents appears in the Chinese one.

/// (level, text) of every heading outside fenced code blocks.
fn headings(markdown: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let level = line.bytes().take_while(|&b| b == b'#').count();
        if level > 0 && line[level..].starts_with(' ') {
            out.push((level, line[level..].trim().to_string()));
        }
    }
    out
}

/// The English heading a Chinese one names in its trailing `<!-- … -->`.
fn counterpart(text: &str) -> Option<String> {
    let start = text.rfind("<!--")?;
    let end = text.rfind("-->")?;
    (end > start && text[end..].trim() == "-->").then(|| text[start + 4..end].trim().to_string())
}

/// The first-column code spans of a Markdown table's rows in `section` (e.g. the keys).
fn table_names(markdown: &str, section: &str) -> Vec<String> {
    let body = markdown.split(section).nth(1).expect("the section exists");
    let body = body.split("\n#").next().unwrap_or(body);
    body.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_english_heading_has_its_chinese_counterpart() {
    let english = headings(include_str!("../README.md"));
    let chinese = headings(include_str!("../README.zh.md"));
    assert!(
        english.len() > 20,
        "the English README's headings were found"
    );
    let paired: Vec<(usize, String)> = chinese
        .iter()
        .map(|(level, text)| {
            let en = counterpart(text).unwrap_or_else(|| {
                panic!(
                    "README.zh.md heading {text:?} does not name its English heading (<!-- … -->)"
                )
            });
            (*level, en)
        })
        .collect();
    for (i, heading) in english.iter().enumerate() {
        assert_eq!(
            paired.get(i),
            Some(heading),
            "README.zh.md heading {} should stand for README.md's {:?} (level {})",
            i + 1,
            heading.1,
            heading.0
        );
    }
    assert_eq!(
        paired.len(),
        english.len(),
        "README.zh.md has headings README.md lacks"
    );
}

#[test]
fn every_key_and_command_is_in_the_chinese_readme() {
    let english = include_str!("../README.md");
    let chinese = include_str!("../README.zh.md");
    let keys = table_names(english, "### servers.toml");
    assert!(
        keys.len() > 30 && keys.contains(&"dns_discovery".to_string()),
        "{keys:?}"
    );
    let commands = table_names(english, "## Commands");
    assert!(commands.len() >= 6, "{commands:?}");
    for name in keys.iter().chain(&commands) {
        assert!(
            chinese.contains(&format!("`{name}`")),
            "README.zh.md lacks `{name}`"
        );
    }
}

#[test]
fn the_checks_can_fail() {
    assert_eq!(
        counterpart("快速开始 <!-- Quickstart -->").as_deref(),
        Some("Quickstart")
    );
    assert_eq!(counterpart("快速开始"), None);
    assert_eq!(counterpart("a <!-- b --> c"), None);
    assert_eq!(
        headings("# a\n```\n# not a heading\n```\n## b\n#c"),
        vec![(1, "a".into()), (2, "b".into())]
    );
}
