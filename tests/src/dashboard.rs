//! Reading the Grafana dashboard: its queries and the variables they use.

use std::collections::BTreeSet;

use serde_json::Value as Json;

/// Grafana variables referenced as `$name`, `${name}` or `[[name]]` in a query.
pub fn grafana_variables(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut vars = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(['$', '[']) {
        let tail = &rest[i..];
        let (name, used) = if let Some(t) = tail.strip_prefix("${") {
            let end = t.find(['}', ':']).unwrap_or(t.len());
            (&t[..end], 2 + end)
        } else if let Some(t) = tail.strip_prefix("[[") {
            let end = t.find([']', ':']).unwrap_or(t.len());
            (&t[..end], 2 + end)
        } else if let Some(t) = tail.strip_prefix('$') {
            let end = t.find(|c| !is_name(c)).unwrap_or(t.len());
            (&t[..end], 1 + end)
        } else {
            ("", 1)
        };
        if !name.is_empty() && name.chars().all(is_name) {
            vars.insert(name.to_owned());
        }
        rest = &tail[used.max(1)..];
    }
    vars
}

/// A dashboard query made plain PromQL: Grafana's interval variables become a duration, the
/// others (used inside label matchers) a placeholder value.
pub fn expand_grafana_variables(query: &str) -> String {
    expand_with(query, "x", "5m")
}

/// A dashboard query with label variables set to `label_value` and Grafana's interval
/// variables (`$__rate_interval`, …) set to `interval`.
pub fn expand_with(query: &str, label_value: &str, interval: &str) -> String {
    let mut out = query.to_owned();
    for var in grafana_variables(query) {
        let value = if var.starts_with("__") {
            interval
        } else {
            label_value
        };
        for form in [
            format!("${{{var}}}"),
            format!("[[{var}]]"),
            format!("${var}"),
        ] {
            out = out.replace(&form, value);
        }
    }
    out
}

/// Every panel of the dashboard, those inside rows included.
pub fn all_panels(dashboard: &Json) -> Vec<Json> {
    fn collect(panels: &Json, out: &mut Vec<Json>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p.clone());
            collect(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    out
}

/// The PromQL of a query variable (`label_values(<selector>, <label>)` or a plain query).
pub fn variable_query(var: &Json) -> String {
    let q = match &var["query"] {
        Json::String(s) => s.clone(),
        q => q["query"].as_str().unwrap_or_default().to_owned(),
    };
    match q.strip_prefix("label_values(") {
        Some(args) => args[..args.rfind(',').expect("label_values(selector, label)")]
            .trim()
            .to_owned(),
        None => q,
    }
}

/// Every PromQL query of the dashboard: panel targets, annotations and query variables, with
/// where each comes from.
pub fn dashboard_queries(dashboard: &Json) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in all_panels(dashboard) {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            queries.push((
                format!("panel {:?}", panel["title"].as_str().unwrap_or("?")),
                expr.to_owned(),
            ));
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .expect("annotations")
    {
        if let Some(expr) = a["expr"].as_str() {
            queries.push((
                format!("annotation {:?}", a["name"].as_str().unwrap_or("?")),
                expr.to_owned(),
            ));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if v["type"] == "query" {
            queries.push((
                format!("variable {:?}", v["name"].as_str().unwrap_or("?")),
                variable_query(v),
            ));
        }
    }
    queries
}
