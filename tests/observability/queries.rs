//! The PromQL of the chart's Grafana dashboard and alerting rules, checked against a real
//! `/metrics` scrape. Shared by `runtime/tests/observability.rs` (the runtime binary) and
//! `operator/tests/observability.rs` (the operator's health server), which include it with
//! `#[path]`.
//!
//! Every expression is parsed with `promql-parser` (after replacing Grafana's `$variables` and
//! the rules' `$threshold`); each vector selector must name a `kinfer_*` series that the scrape
//! has, with the exact sample name (`_bucket`, `_sum`, `_count` for histograms). Label names in
//! matchers and in `by (...)` / `on (...)` clauses must be labels of those series, or target
//! labels that Prometheus adds when it scrapes the pod.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use promql_parser::{
    label::Matchers,
    parser::{self, Expr, LabelModifier, VectorSelector},
};

/// Labels the PodMonitor / ServiceMonitor scrape adds to every series (prometheus-operator).
pub const TARGET_LABELS: &[&str] = &["namespace", "pod", "container", "endpoint", "instance", "job", "service"];

/// Where the chart keeps the dashboard and the rules.
pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/kinfer-operator")
}

pub const DASHBOARD: &str = "dashboards/kinfer.json";
pub const RULES: &str = "rules/kinfer-rules.yaml";

/// One PromQL expression and where it comes from.
#[derive(Debug, Clone)]
pub struct Query {
    pub source: String,
    pub expr: String,
}

/// Every expression of the dashboard: panel targets (`expr`) and query variables
/// (`label_values(<selector>, label)`).
pub fn dashboard_queries() -> Vec<Query> {
    let path = chart_dir().join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    // Panels (rows nest theirs) and annotation queries; variables below.
    collect_exprs(&dash["panels"], "dashboard", &mut out);
    collect_exprs(&dash["annotations"], "dashboard annotations", &mut out);
    assert!(!out.is_empty(), "{}: no panel has an expr", path.display());
    for v in dash["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or("?");
        let q = v["query"].get("query").unwrap_or(&v["query"]);
        let q = q.as_str().unwrap_or_else(|| panic!("variable {name}: query is not a string"));
        out.push(Query { source: format!("dashboard variable ${name}"), expr: variable_selector(q) });
    }
    out
}

fn collect_exprs(v: &serde_json::Value, path: &str, out: &mut Vec<Query>) {
    match v {
        serde_json::Value::Object(m) => {
            let here = match (m.get("title").and_then(|t| t.as_str()), m.get("refId").and_then(|t| t.as_str())) {
                (Some(t), _) => format!("{path} > panel {t:?}"),
                (None, Some(r)) => format!("{path} > target {r}"),
                _ => path.to_string(),
            };
            if let Some(e) = m.get("expr") {
                let e = e.as_str().unwrap_or_else(|| panic!("{here}: expr is not a string"));
                out.push(Query { source: here.clone(), expr: e.to_string() });
            }
            for (k, child) in m {
                if k != "templating" {
                    collect_exprs(child, &here, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|c| collect_exprs(c, path, out)),
        _ => {}
    }
}

/// The PromQL inside a Grafana query variable: `label_values(<selector>, <label>)` or
/// `query_result(<expr>)`. Any other form is refused, so nothing is skipped silently.
fn variable_selector(q: &str) -> String {
    let q = q.trim();
    if let Some(inner) = q.strip_prefix("query_result(").and_then(|r| r.strip_suffix(')')) {
        return inner.to_string();
    }
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {q:?}: use label_values(<selector>, <label>)"));
    // The last comma outside braces and quotes separates the selector from the label.
    let (mut depth, mut quoted, mut split) = (0i32, false, None);
    for (i, c) in inner.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '{' | '(' if !quoted => depth += 1,
            '}' | ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => split = Some(i),
            _ => {}
        }
    }
    let i =
        split.unwrap_or_else(|| panic!("variable query {q:?} names no metric: use label_values(<selector>, <label>)"));
    inner[..i].trim().to_string()
}

/// Every `expr` of the alerting rules file.
pub fn rule_queries() -> Vec<Query> {
    let path = chart_dir().join(RULES);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rules: Vec<serde_yaml::Value> = serde_yaml::from_str(&text).expect("the rules file is a YAML list");
    rules
        .iter()
        .map(|r| {
            let alert = r["alert"].as_str().expect("each rule has an alert name");
            let expr = r["expr"].as_str().unwrap_or_else(|| panic!("rule {alert} has no expr"));
            Query { source: format!("rule {alert}"), expr: expr.to_string() }
        })
        .collect()
}

/// Replaces Grafana's interval macros with `5m` and any other `$name` / `${name}` (Grafana
/// variables, the rules' `$threshold`) with `1`, which is valid both as a number and inside
/// a quoted label matcher.
pub fn substitute(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let braced = after.starts_with('{');
        let body = if braced { &after[1..] } else { after };
        let len = body.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(body.len());
        let name = &body[..len];
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        let mut consumed = len + usize::from(braced);
        if braced {
            assert!(body[len..].starts_with('}'), "unterminated ${{{name} in {expr:?}");
            consumed += 1;
        }
        out.push_str(if name.starts_with("__") && (name.ends_with("interval") || name == "__range") {
            "5m"
        } else {
            "1"
        });
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// The series of a Prometheus text exposition: sample name → label names seen on it.
#[derive(Debug, Default)]
pub struct Scrape {
    pub series: BTreeMap<String, BTreeSet<String>>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let end = line.find(['{', ' ']).unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let labels = series.entry(line[..end].to_string()).or_default();
            if line[end..].starts_with('{') {
                labels.extend(label_names(&line[end + 1..]).unwrap_or_else(|| panic!("bad labels in {line:?}")));
            }
        }
        Scrape { series }
    }

    pub fn has(&self, name: &str) -> bool {
        self.series.contains_key(name)
    }
}

/// Label names of `a="x",b="y\"z"} 1`.
fn label_names(s: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        match chars.peek()? {
            '}' => return Some(names),
            ',' | ' ' => {
                chars.next();
                continue;
            }
            _ => {}
        }
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut escaped = false;
        loop {
            let c = chars.next()?;
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        names.push(name.trim().to_string());
    }
}

/// What a check found: the metrics it checked and every problem.
#[derive(Debug, Default)]
pub struct Report {
    pub checked: BTreeSet<String>,
    pub problems: Vec<String>,
}

/// Checks `queries` against `scrape`, for the metrics `owns` selects (the rest belong to the
/// other binary's test). Every selector must name a `kinfer_*` metric, whoever owns it.
pub fn check(queries: &[Query], scrape: &Scrape, owns: impl Fn(&str) -> bool) -> Report {
    let mut report = Report::default();
    for q in queries {
        let text = substitute(&q.expr);
        match parser::parse(&text) {
            Ok(ast) => Checker { source: &q.source, scrape, owns: &owns, report: &mut report }.walk(&ast),
            Err(e) => report.problems.push(format!("{}: does not parse: {e}\n  {text}", q.source)),
        }
    }
    report
}

struct Checker<'a, F: Fn(&str) -> bool> {
    source: &'a str,
    scrape: &'a Scrape,
    owns: &'a F,
    report: &'a mut Report,
}

impl<F: Fn(&str) -> bool> Checker<'_, F> {
    fn problem(&mut self, p: String) {
        self.report.problems.push(format!("{}: {p}", self.source));
    }

    fn walk(&mut self, e: &Expr) {
        match e {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::Aggregate(a) => {
                self.walk(&a.expr);
                if let Some(p) = &a.param {
                    self.walk(p);
                }
                if let Some(LabelModifier::Include(by)) = &a.modifier {
                    self.grouping(&by.labels, &[&a.expr], "by");
                }
            }
            Expr::Binary(b) => {
                self.walk(&b.lhs);
                self.walk(&b.rhs);
                if let Some(LabelModifier::Include(on)) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    self.grouping(&on.labels, &[&b.lhs, &b.rhs], "on");
                }
            }
            Expr::Unary(u) => self.walk(&u.expr),
            Expr::Paren(p) => self.walk(&p.expr),
            Expr::Subquery(s) => self.walk(&s.expr),
            Expr::Call(c) => c.args.args.iter().for_each(|a| self.walk(a)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            Expr::Extension(_) => self.problem("unexpected extension node".into()),
        }
    }

    fn selector(&mut self, vs: &VectorSelector) {
        let Some(name) = metric_name(vs) else {
            return self.problem(format!("selector {vs} has no metric name"));
        };
        if !name.starts_with("kinfer_") {
            return self.problem(format!("{name} is not a kinfer metric: nothing checks that it exists"));
        }
        if !(self.owns)(&name) {
            return;
        }
        self.report.checked.insert(name.clone());
        let Some(labels) = self.scrape.series.get(&name) else {
            let known: Vec<&str> =
                self.scrape.series.keys().filter(|k| k.starts_with("kinfer_")).map(String::as_str).collect();
            return self.problem(format!("{name} is not exported; /metrics has {}", known.join(", ")));
        };
        let unknown: Vec<String> = all_matchers(&vs.matchers)
            .map(|m| m.name.clone())
            .filter(|l| l != "__name__" && !labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()))
            .collect();
        if !unknown.is_empty() {
            self.problem(format!("{name} has no label {unknown:?} (it has {labels:?})"));
        }
    }

    /// `by (...)` / `on (...)` labels must exist on a metric below (or be target labels).
    fn grouping(&mut self, wanted: &[String], below: &[&Expr], clause: &str) {
        let mut names = BTreeSet::new();
        below.iter().for_each(|e| metrics_in(e, &mut names));
        if names.iter().any(|n| !(self.owns)(n) || !self.scrape.has(n)) {
            return; // another binary's metrics, or already reported as missing
        }
        let have: BTreeSet<&String> = names.iter().flat_map(|n| &self.scrape.series[n]).collect();
        for l in wanted {
            if !have.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                self.problem(format!("{clause} ({l}): no label {l} on {names:?}"));
            }
        }
    }
}

fn all_matchers(m: &Matchers) -> impl Iterator<Item = &promql_parser::label::Matcher> {
    m.matchers.iter().chain(m.or_matchers.iter().flatten())
}

fn metric_name(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        all_matchers(&vs.matchers)
            .find(|m| m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal))
            .map(|m| m.value.clone())
    })
}

fn metrics_in(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::VectorSelector(vs) => out.extend(metric_name(vs)),
        Expr::MatrixSelector(ms) => out.extend(metric_name(&ms.vs)),
        Expr::Aggregate(a) => metrics_in(&a.expr, out),
        Expr::Binary(b) => {
            metrics_in(&b.lhs, out);
            metrics_in(&b.rhs, out);
        }
        Expr::Unary(u) => metrics_in(&u.expr, out),
        Expr::Paren(p) => metrics_in(&p.expr, out),
        Expr::Subquery(s) => metrics_in(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| metrics_in(a, out)),
        _ => {}
    }
}

/// Every query of the dashboard and the rules.
pub fn all_queries() -> Vec<Query> {
    let mut q = dashboard_queries();
    q.extend(rule_queries());
    q
}
