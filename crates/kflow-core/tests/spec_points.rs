//! Spec points an external check found wrong (issue 7, section 9), each test written from the
//! text it cites: the `switch` default case and case order, secrets that are not declared or
//! not configured, URI template variables, and event filters (literal values, regular
//! expressions, runtime expressions, correlation, `until`).

mod sim;

use serde_json::{Value, json};

use kflow_core::{Effect, Instance, InstanceConfig};
use sim::{Sim, echo, load};

fn doc(body: &str) -> String {
    format!("document:\n  dsl: '1.0.3'\n  namespace: test\n  name: t\n  version: '1.0.0'\n{body}")
}

fn run(body: &str, input: Value) -> Sim {
    let mut s = Sim::new(load(&doc(body)));
    s.run(input, echo);
    s
}

/// A run whose host has exactly `secrets` configured.
fn run_with_secrets(body: &str, secrets: Value, input: Value) -> Sim {
    let wf = load(&doc(body));
    let mut s = Sim::new(wf.clone());
    s.inst = Instance::new(
        wf,
        InstanceConfig {
            id: "test-instance".into(),
            secrets,
            runtime: Value::Null,
            limits: Default::default(),
        },
    );
    s.run(input, echo);
    s
}

/// A run of a `listen` task with `events` waiting to be delivered.
fn listen(body: &str, input: Value, events: Vec<Value>) -> Sim {
    let mut s = Sim::new(load(&doc(body)));
    s.events.extend(events);
    s.run(input, echo);
    s
}

fn ran(s: &Sim, task: &str) -> bool {
    s.trace().contains(&format!("task.completed:{task}"))
}

// ---------------------------------------------------------------------------------------------
// Switch (dsl-reference.md, "Switch" and "Switch Case")

/// A switch whose default case is written first, then three tasks the cases jump to.
const SWITCH_DEFAULT_FIRST: &str = r#"do:
  - pick:
      switch:
        - fallback:
            then: other
        - red:
            when: .color == "red"
            then: setRed
        - alsoRed:
            when: .color == "red" or .color == "crimson"
            then: setCrimson
  - setRed:
      set:
        picked: red
      then: end
  - setCrimson:
      set:
        picked: crimson
      then: end
  - other:
      set:
        picked: other
"#;

#[test]
fn switch_default_case_is_taken_only_when_no_other_case_matches_wherever_it_is_written() {
    // Switch Case, `when`: "If not set, the case will be matched by default if no other case
    // match." A default case written first must not shadow the cases after it.
    let s = run(SWITCH_DEFAULT_FIRST, json!({"color": "red"}));
    assert_eq!(s.output(), json!({"picked": "red"}));
    assert!(!ran(&s, "other"));
    // The cases with a condition are tried in order: the first that matches wins.
    let s = run(SWITCH_DEFAULT_FIRST, json!({"color": "crimson"}));
    assert_eq!(s.output(), json!({"picked": "crimson"}));
    // Nothing else matches: the default case.
    let s = run(SWITCH_DEFAULT_FIRST, json!({"color": "green"}));
    assert_eq!(s.output(), json!({"picked": "other"}));
    assert!(!ran(&s, "setRed") && !ran(&s, "setCrimson"));
}

#[test]
fn switch_without_a_match_or_default_follows_the_task_then() {
    // No case matches and there is no default case: the switch task completes with its input
    // as output and its own `then` applies (ctk switch.feature, "implicit default case":
    // `then: end` on the switch ends the workflow with the input).
    let body = r#"do:
  - pick:
      switch:
        - red:
            when: .color == "red"
            then: setRed
      then: end
  - setRed:
      set:
        colors: [red]
"#;
    let s = run(body, json!({"color": "yellow"}));
    assert_eq!(s.output(), json!({"color": "yellow"}));
    assert_eq!(s.trace(), ["task.started:pick", "task.completed:pick"]);
    // Without `then` on the switch, the default flow directive is `continue`
    // (dsl-reference.md, Task: "If not set, defaults to `continue`").
    let body = r#"do:
  - pick:
      switch:
        - red:
            when: .color == "red"
            then: end
  - next:
      set:
        went: on
"#;
    assert_eq!(
        run(body, json!({"color": "blue"})).output(),
        json!({"went": "on"})
    );
}

#[test]
fn switch_case_then_is_a_flow_directive_that_wins_over_the_task_then() {
    // Switch Case, `then`: "The flow directive to execute when the case matches", one of
    // continue, exit, end or a task name (Flow Directive).
    let body = r#"do:
  - outer:
      do:
        - pick:
            switch:
              - toEnd:
                  when: .go == "end"
                  then: end
              - toExit:
                  when: .go == "exit"
                  then: exit
              - toContinue:
                  when: .go == "continue"
                  then: continue
              - toNamed:
                  when: .go == "named"
                  then: named
            then: named
        - inner:
            set:
              at: inner
        - named:
            set:
              at: named
  - after:
      set:
        after: ${ .at // "none" }
"#;
    // end: the workflow ends at once, with the switch's output (its input).
    let s = run(body, json!({"go": "end"}));
    assert_eq!(s.output(), json!({"go": "end"}));
    assert!(!ran(&s, "after"));
    // exit: "Completes the current scope's execution": `outer` ends, `after` runs.
    let s = run(body, json!({"go": "exit"}));
    assert_eq!(s.output(), json!({"after": "none"}));
    assert!(!ran(&s, "inner") && !ran(&s, "named"));
    // continue: the next task of the list, although the switch task says `then: named`.
    let s = run(body, json!({"go": "continue"}));
    assert!(ran(&s, "inner"));
    assert_eq!(s.output(), json!({"after": "named"}));
    // a task name.
    let s = run(body, json!({"go": "named"}));
    assert!(!ran(&s, "inner"));
    assert_eq!(s.output(), json!({"after": "named"}));
}

#[test]
fn switch_with_two_default_cases_is_refused() {
    // Switch Case: "there can be only one default case, all others MUST set a condition."
    let text = doc(
        "do:\n  - pick:\n      switch:\n        - a:\n            then: end\n        - b:\n            then: end\n",
    );
    let diags = kflow_dsl::load(text.as_bytes()).err().unwrap_or_default();
    assert!(
        diags
            .iter()
            .any(|d| d.message.contains("only one switch case may omit 'when'")),
        "{diags:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets (dsl.md, "Secret"; dsl-reference.md, Use: `secrets`)

fn is_authorization_403(e: &kflow_core::WfError) -> bool {
    e.type_ == "https://open-workflow-specification.org/spec/1.0.0/errors/authorization"
        && e.status == 403
}

#[test]
fn reading_a_declared_secret_that_is_not_configured_raises_authorization_403() {
    // dsl.md, Secret: "If a workflow attempts to access a secret to which it does not have
    // access rights or which does not exist, runtimes must raise an error with type
    // https://open-workflow-specification.org/spec/1.0.0/errors/authorization and status 403."
    let body = "use:\n  secrets: [api, db]\ndo:\n  - use:\n      set:\n        t: ${ $secrets.db.password }\n";
    let s = run_with_secrets(body, json!({"api": {"token": "t"}}), json!({}));
    let e = s.error();
    assert!(is_authorization_403(&e), "{e:?}");
    assert_eq!(e.instance.as_deref(), Some("/do/0/use"));
    assert!(e.detail.as_deref().unwrap_or("").contains("'db'"), "{e:?}");
    // The same workflow with the secret configured runs.
    let s = run_with_secrets(body, json!({"db": {"password": "pw"}}), json!({}));
    assert_eq!(s.output(), json!({"t": "pw"}));
}

#[test]
fn reading_an_undeclared_secret_raises_authorization_403_even_when_configured() {
    // A secret the workflow did not declare in `use.secrets` is one it has no access rights to.
    let body = "use:\n  secrets: [api]\ndo:\n  - use:\n      set:\n        t: ${ $secrets[\"db\"].password }\n";
    let s = run_with_secrets(
        body,
        json!({"api": {"token": "t"}, "db": {"password": "pw"}}),
        json!({}),
    );
    let e = s.error();
    assert!(is_authorization_403(&e), "{e:?}");
    assert!(
        e.detail
            .as_deref()
            .unwrap_or("")
            .contains("does not declare"),
        "{e:?}"
    );
}

#[test]
fn secrets_holds_only_the_declared_secrets() {
    // `$secrets` is "a key/value map of the workflow secrets" (dsl.md, Runtime expression
    // arguments): a workflow declaring one secret does not see the others the host has.
    let body = "use:\n  secrets: [api]\ndo:\n  - look:\n      set:\n        all: ${ $secrets }\n        names: ${ $secrets | keys }\n        dynamic: ${ \"db\" as $n | $secrets[$n] }\n";
    let s = run_with_secrets(
        body,
        json!({"api": {"token": "t"}, "db": {"password": "pw"}}),
        json!({}),
    );
    assert_eq!(
        s.output(),
        json!({"all": {"api": {"token": "t"}}, "names": ["api"], "dynamic": null})
    );
    // A workflow that declares no secret sees none.
    let s = run_with_secrets(
        "do:\n  - look:\n      set:\n        all: ${ $secrets }\n",
        json!({"api": {"token": "t"}}),
        json!({}),
    );
    assert_eq!(s.output(), json!({"all": {}}));
}

#[test]
fn a_secret_based_authentication_without_the_secret_raises_authorization_403_and_is_catchable() {
    // dsl-reference.md, Authentication `use: <secret>` (example `basic: { use:
    // usernamePasswordSecret }`) with the secret declared but not configured on the host.
    let body = r#"use:
  secrets: [usernamePasswordSecret]
do:
  - guarded:
      try:
        - sampleTask:
            call: http
            with:
              method: get
              endpoint:
                uri: https://secured.fake.com/sample
                authentication:
                  basic:
                    use: usernamePasswordSecret
      catch:
        errors:
          with:
            type: https://open-workflow-specification.org/spec/1.0.0/errors/authorization
            status: 403
        as: err
        do:
          - note:
              set:
                caught: ${ $err.status }
"#;
    let s = run_with_secrets(body, json!({}), json!({}));
    assert_eq!(s.output(), json!({"caught": 403}));
    // Nothing was sent.
    assert!(!s.started.iter().any(|(_, e)| matches!(e, Effect::Http(_))));
    // Configured: the request carries the credentials.
    let s = run_with_secrets(
        body,
        json!({"usernamePasswordSecret": {"username": "u", "password": "p"}}),
        json!({}),
    );
    assert_eq!(
        s.output()["auth"],
        json!({"scheme": "basic", "username": "u", "password": "p"})
    );
}

// ---------------------------------------------------------------------------------------------
// URI templates (dsl-reference.md, "URI Template")

fn uri_of(template: &str, input: Value) -> Result<String, kflow_core::WfError> {
    let body = format!(
        "do:\n  - get:\n      call: http\n      with:\n        method: get\n        endpoint: {template}\n"
    );
    let s = run(&body, input);
    match s.inst.status() {
        kflow_core::Status::Completed(v) => Ok(v["uri"].as_str().unwrap_or_default().to_string()),
        _ => Err(s.error()),
    }
}

#[test]
fn uri_template_missing_variable_becomes_an_empty_string() {
    // "If no value is found for the identifier, an empty string will be used."
    assert_eq!(
        uri_of("https://petstore.swagger.io/v2/pet/{petId}", json!({})).ok(),
        Some("https://petstore.swagger.io/v2/pet/".to_string())
    );
    // null is a valid value (RFC 6570: undefined) and expands to nothing too.
    assert_eq!(
        uri_of("http://svc/pet/{petId}/x", json!({"petId": null})).ok(),
        Some("http://svc/pet//x".to_string())
    );
}

#[test]
fn uri_template_scalar_variables_are_substituted_and_encoded() {
    // "The referenced variable must be of type string, number, boolean, or null." Simple String
    // Expansion (RFC 6570 §3.2.2) percent-encodes everything but unreserved characters.
    assert_eq!(
        uri_of(
            "http://svc/{a}/{b}/{c}/{d}",
            json!({"a": "x y/z?é", "b": 42, "c": true, "d": 1.5})
        )
        .ok(),
        Some("http://svc/x%20y%2Fz%3F%C3%A9/42/true/1.5".to_string())
    );
    // "Only top-level properties can be interpolated ... identifiers are treated verbatim":
    // `{pet.id}` is the property "pet.id", not `.pet.id`.
    assert_eq!(
        uri_of(
            "http://svc/{pet.id}",
            json!({"pet.id": "top", "pet": {"id": "nested"}})
        )
        .ok(),
        Some("http://svc/top".to_string())
    );
}

#[test]
fn uri_template_object_or_array_variable_raises_an_expression_error_400() {
    // "If the variable is of a different type an error with type
    // https://open-workflow-specification.org/spec/1.0.0/errors/expression and status 400 will
    // be raised."
    for value in [json!({"id": 1}), json!([1, 2])] {
        let e = uri_of("http://svc/pet/{petId}", json!({ "petId": value }))
            .err()
            .unwrap_or_else(|| panic!("{value} must be refused"));
        assert_eq!(
            (e.type_.as_str(), e.status),
            (
                "https://open-workflow-specification.org/spec/1.0.0/errors/expression",
                400
            ),
            "{e:?}"
        );
        assert!(e.detail.as_deref().unwrap_or("").contains("petId"), "{e:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Event filters (dsl-reference.md, "Event Filter", "Correlation", "Event Consumption Strategy",
// "Listen")

fn ev(ty: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": format!("{ty}-{data}"), "source": "https://hospital.example/ward/1", "type": ty, "data": data})
}

fn listen_one(with: &str, events: Vec<Value>) -> Sim {
    let body = format!(
        "do:\n  - l:\n      listen:\n        to:\n          one:\n            with:\n{with}"
    );
    listen(&body, json!({}), events)
}

#[test]
fn filter_literal_strings_match_exactly() {
    // Event Filter, `with`: "A name/value mapping of the attributes filtered events must
    // define."
    let s = listen_one(
        "              type: com.example.order\n",
        vec![
            ev("com.example.order.created", json!(1)),
            ev("com.example.orders", json!(2)),
            ev("com.example.order", json!(3)),
        ],
    );
    assert_eq!(s.output(), json!([3]));
}

#[test]
fn filter_literal_strings_are_regular_expressions_matching_the_whole_value() {
    // Event Filter, `with`: "Supports both regular expressions and runtime expressions."
    let s = listen_one(
        "              type: com\\.example\\.(order|refund)\\..*\n              source: https://hospital\\.example/ward/[0-9]+\n",
        vec![
            ev("org.example.order.created", json!(1)),
            ev("com.example.invoice.created", json!(2)),
            ev("com.example.refund.created", json!(3)),
        ],
    );
    assert_eq!(s.output(), json!([3]));
}

#[test]
fn filter_runtime_expression_on_data_is_the_spec_example() {
    // Listen, example: `data: ${ .temperature > 38 }` keeps the measurements above 38 °C; the
    // expression reads the event's data. An event whose data it cannot read (a string) does
    // not match and does not fault the workflow.
    let s = listen_one(
        "              type: com.fake-hospital.vitals.measurements.temperature\n              data: ${ .temperature > 38 }\n",
        vec![
            ev(
                "com.fake-hospital.vitals.measurements.temperature",
                json!({"temperature": 36.6}),
            ),
            ev(
                "com.fake-hospital.vitals.measurements.temperature",
                json!("garbled"),
            ),
            ev(
                "com.fake-hospital.vitals.measurements.bpm",
                json!({"temperature": 40}),
            ),
            ev(
                "com.fake-hospital.vitals.measurements.temperature",
                json!({"temperature": 39.2}),
            ),
        ],
    );
    assert_eq!(s.output(), json!([{"temperature": 39.2}]));
}

#[test]
fn listen_to_any_with_the_spec_filters_until_consumed_stops_at_the_until_event() {
    // examples/listen-to-any-until-consumed.yaml, and Listen: "Events consumed by an until
    // clause should not be included in the task's output."
    let body = r#"do:
  - callDoctor:
      listen:
        to:
          any:
            - with:
                type: com.fake-hospital.vitals.measurements.temperature
                data: ${ .temperature > 38 }
            - with:
                type: com.fake-hospital.vitals.measurements.bpm
                data: ${ .bpm < 60 or .bpm > 100 }
          until:
            one:
              with:
                type: com.fake-hospital.patient.checked-out
"#;
    let s = listen(
        body,
        json!({}),
        vec![
            ev(
                "com.fake-hospital.vitals.measurements.temperature",
                json!({"temperature": 37}),
            ),
            ev(
                "com.fake-hospital.vitals.measurements.bpm",
                json!({"bpm": 120}),
            ),
            ev(
                "com.fake-hospital.vitals.measurements.temperature",
                json!({"temperature": 39}),
            ),
            ev("com.fake-hospital.patient.checked-out", json!({"bpm": 130})),
            ev(
                "com.fake-hospital.vitals.measurements.bpm",
                json!({"bpm": 40}),
            ),
        ],
    );
    assert_eq!(s.output(), json!([{"bpm": 120}, {"temperature": 39}]));
}

#[test]
fn until_events_are_not_in_the_output_even_before_until_is_satisfied() {
    // An `until: { all: [...] }` that needs two events: the first one it consumes must not be
    // part of the output either, although `any: []` takes every other event.
    let body = r#"do:
  - l:
      listen:
        to:
          any: []
          until:
            all:
              - with:
                  type: stop
                  data:
                    part: 1
              - with:
                  type: stop
                  data:
                    part: 2
"#;
    let s = listen(
        body,
        json!({}),
        vec![
            ev("reading", json!({"n": 1})),
            ev("stop", json!({"part": 1})),
            ev("reading", json!({"n": 2})),
            ev("stop", json!({"part": 2})),
            ev("reading", json!({"n": 3})),
        ],
    );
    assert_eq!(s.output(), json!([{"n": 1}, {"n": 2}]));
}

#[test]
fn filter_nested_data_attributes_match_as_a_subset_with_patterns_and_expressions() {
    let s = listen_one(
        "              type: order\n              data:\n                customer:\n                  tier: gold|platinum\n                total: ${ . >= 100 }\n",
        vec![
            ev(
                "order",
                json!({"customer": {"tier": "silver"}, "total": 500}),
            ),
            ev("order", json!({"customer": {"tier": "gold"}, "total": 50})),
            ev("order", json!({"customer": "gold", "total": 500})),
            ev(
                "order",
                json!({"customer": {"tier": "platinum", "id": 7}, "total": 120, "extra": true}),
            ),
        ],
    );
    assert_eq!(
        s.output(),
        json!([{"customer": {"tier": "platinum", "id": 7}, "total": 120, "extra": true}])
    );
}

#[test]
fn filter_values_of_other_types_do_not_match_patterns_or_strings() {
    // Inside `data`, JSON types count: "5" does not match 5, and a pattern matches strings only.
    let s = listen_one(
        "              type: order\n              data:\n                count: '5'\n                code: '[0-9]+'\n",
        vec![
            ev("order", json!({"count": 5, "code": "12"})),
            ev("order", json!({"count": "5", "code": 12})),
            ev("order", json!({"count": "5", "code": "12"})),
        ],
    );
    assert_eq!(s.output(), json!([{"count": "5", "code": "12"}]));
    // Context attributes travel as text in CloudEvents: an extension attribute 5 matches '5'.
    let mut e1 = ev("order", json!(1));
    e1["priority"] = json!(4);
    let mut e2 = ev("order", json!(2));
    e2["priority"] = json!(5);
    let s = listen_one(
        "              type: order\n              priority: '5'\n",
        vec![e1, e2],
    );
    assert_eq!(s.output(), json!([2]));
}

#[test]
fn filter_expression_with_a_computed_value_compares_exactly_never_as_a_pattern() {
    // The runtime expression computes the expected value from the task input; a computed value
    // is data, so its `.` is not a wildcard (dsl.md: runtimes must not evaluate expression
    // syntax, regular expressions included, found in data).
    let body = "do:\n  - l:\n      listen:\n        to:\n          one:\n            with:\n              type: ${ $input.wanted }\n";
    let s = listen(
        body,
        json!({"wanted": "a.b"}),
        vec![ev("aXb", json!(1)), ev("a.b", json!(2))],
    );
    assert_eq!(s.output(), json!([2]));
}

#[test]
fn the_host_gets_the_whole_filter_and_decides_as_the_interpreter() {
    // The Listen effect carries the filters as written and the values their expressions read,
    // so a host delivers exactly the events the interpreter takes (kflow_core::events).
    let body = "do:\n  - l:\n      listen:\n        to:\n          any:\n            - with:\n                type: t\n                data: ${ .n > $input.min }\n            - with:\n                type: ${ $input.other }\n          until: ${ length == 2 }\n";
    let events = vec![
        ev("t", json!({"n": 1})),
        ev("u", json!({"n": 5})),
        ev("t", json!({"n": 9})),
        ev("t", json!("text")),
        ev("o", json!({"n": 0})),
    ];
    let input = json!({"min": 2, "other": "o", "big": [1, 2, 3]});
    let s = listen(body, input.clone(), events.clone());
    let (filters, args) = s
        .started
        .iter()
        .find_map(|(_, e)| match e {
            Effect::Listen { filters, args } => Some((filters.clone(), args.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no listen in {:?}", s.started));
    assert_eq!(
        filters,
        vec![
            json!({"type": "t", "data": "${ .n > $input.min }"}),
            json!({"type": "${ $input.other }"}),
        ]
    );
    assert_eq!(args, json!({"input": input}).as_object().cloned());
    // The output is every event the interpreter took (two, then `until` holds).
    let sub = kflow_core::events::Subscription::new(&filters, args.as_ref());
    let host: Vec<Value> = events
        .iter()
        .filter(|e| sub.matches(e))
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(host, vec![json!({"n": 9}), json!({"n": 0})]);
    assert_eq!(s.output(), Value::Array(host));
}

#[test]
fn a_filter_reading_an_undeclared_secret_is_refused_when_listening_starts() {
    let body = "do:\n  - l:\n      listen:\n        to:\n          one:\n            with:\n              source: ${ $secrets.partner }\n";
    let s = run_with_secrets(body, json!({"partner": "p"}), json!({}));
    assert!(
        !s.started
            .iter()
            .any(|(_, e)| matches!(e, Effect::Listen { .. })),
        "nothing subscribed"
    );
    assert!(is_authorization_403(&s.error()), "{:?}", s.error());
}

#[test]
fn correlation_expect_is_evaluated_on_the_task_input_and_from_on_the_event() {
    // Correlation: `from` is "a runtime expression used to extract the correlation value from
    // the filtered event"; `expect` is "a constant or a runtime expression ... used to
    // determine whether or not the extracted correlation value matches expectations".
    let body = r#"do:
  - l:
      listen:
        to:
          all:
            - with:
                type: paid
              correlate:
                order:
                  from: ${ .data.order }
                  expect: ${ .orderId }
            - with:
                type: shipped
              correlate:
                order:
                  from: ${ .data.order }
"#;
    let s = listen(
        body,
        json!({"orderId": 7}),
        vec![
            ev("paid", json!({"order": 6, "n": 1})),
            ev("paid", json!({"order": 7, "n": 2})),
            ev("shipped", json!({"order": 6, "n": 3})),
            ev("shipped", json!({"order": 7, "n": 4})),
        ],
    );
    // paid/6 fails `expect` (7, from the task input); paid/7 fixes the correlation value 7
    // ("the first extracted value will be used as the correlation's expectation" for the
    // filter without `expect`), so shipped/6 does not correlate and shipped/7 does.
    assert_eq!(
        s.output(),
        json!([{"order": 7, "n": 2}, {"order": 7, "n": 4}])
    );
}

#[test]
fn listen_any_empty_takes_every_event_and_all_takes_one_of_each() {
    // Event Consumption Strategy: `any` "If empty, listens to all incoming events"; `all`
    // waits "for all defined events".
    let s = listen(
        "do:\n  - l:\n      listen:\n        to:\n          any: []\n",
        json!({}),
        vec![ev("x", json!(1))],
    );
    assert_eq!(s.output(), json!([1]));
    let s = listen(
        "do:\n  - l:\n      listen:\n        to:\n          all:\n            - with:\n                type: a\n            - with:\n                type: b\n",
        json!({}),
        vec![ev("a", json!(1)), ev("a", json!(2)), ev("b", json!(3))],
    );
    assert_eq!(s.output(), json!([1, 3]));
}
