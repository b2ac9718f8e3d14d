//! Rendering of WhatsApp text: strict Handlebars, the clinic's helpers, and the provider's
//! `{n}` placeholders, through the public `recuerda::render` API.

use proptest::prelude::*;
use recuerda::render::{
    check_variable, place_variables, placeholders, Renderer, TemplateSyntaxError, HELPERS,
};
use serde_json::{json, Value};

/// Registers `source` and renders it over `ctx`; errors as their message.
fn render(source: &str, ctx: &Value) -> Result<String, String> {
    let mut renderer = Renderer::new();
    renderer.register("t", source).map_err(|e| e.message)?;
    renderer.render("t", ctx).map_err(|e| e.message)
}

fn refused(source: &str) -> TemplateSyntaxError {
    match Renderer::new().register("t", source) {
        Ok(()) => panic!("`{source}` should be refused"),
        Err(e) => e,
    }
}

fn appointment(start: &str) -> Value {
    json!({
        "appointment": {
            "id": "a-1",
            "start": start,
            "paciente": "CARLOS andrés pérez",
            "profesional": "Dra. Gómez",
            "sede": "norte",
        }
    })
}

fn in_zone(start: &str, zone: &str) -> Value {
    let mut ctx = appointment(start);
    ctx["rule"] = json!({"name": "recordatorio", "timezone": zone});
    ctx
}

#[test]
fn dates_and_times_in_spanish() {
    let ctx = appointment("2026-11-26T15:30:00-05:00");
    assert_eq!(
        render("{{fecha appointment.start}}", &ctx).unwrap(),
        "jueves 26 de noviembre"
    );
    assert_eq!(
        render("{{hora appointment.start}}", &ctx).unwrap(),
        "3:30 p. m."
    );
    assert_eq!(
        render("{{fecha_corta appointment.start}}", &ctx).unwrap(),
        "26/11/2026"
    );
}

#[test]
fn hora_edges() {
    for (start, expected) in [
        ("2026-11-26T09:05:00-05:00", "9:05 a. m."),
        ("2026-11-26T12:00:00-05:00", "12:00 p. m."),
        ("2026-11-26T00:15:00-05:00", "12:15 a. m."),
        ("2026-11-26T23:59:00-05:00", "11:59 p. m."),
    ] {
        assert_eq!(
            render("{{hora appointment.start}}", &appointment(start)).unwrap(),
            expected,
            "{start}"
        );
    }
}

#[test]
fn utc_input_is_shown_in_the_rule_zone() {
    let utc = "2026-11-26T20:30:00Z";
    // No `rule.timezone`: Bogotá.
    assert_eq!(
        render("{{hora appointment.start}}", &appointment(utc)).unwrap(),
        "3:30 p. m."
    );
    assert_eq!(
        render(
            "{{hora appointment.start}}",
            &in_zone(utc, "America/Bogota")
        )
        .unwrap(),
        "3:30 p. m."
    );
    assert_eq!(
        render(
            "{{hora appointment.start}}",
            &in_zone(utc, "America/Mexico_City")
        )
        .unwrap(),
        "2:30 p. m."
    );
    // 02:00 UTC on the 27th is still the evening of the 26th in Bogotá.
    let late = appointment("2026-11-27T02:00:00Z");
    assert_eq!(
        render(
            "{{fecha appointment.start}} {{hora appointment.start}}",
            &late
        )
        .unwrap(),
        "jueves 26 de noviembre 9:00 p. m."
    );
}

#[test]
fn naive_input_is_wall_time_in_the_rule_zone() {
    for zone in ["America/Bogota", "America/Mexico_City", "Europe/Madrid"] {
        let ctx = in_zone("2026-11-26T15:30", zone);
        assert_eq!(
            render("{{hora appointment.start}}", &ctx).unwrap(),
            "3:30 p. m.",
            "{zone}"
        );
    }
    let ctx = appointment("2026-11-26 08:00");
    assert_eq!(
        render(
            "{{fecha_corta appointment.start}} {{hora appointment.start}}",
            &ctx
        )
        .unwrap(),
        "26/11/2026 8:00 a. m."
    );
}

#[test]
fn bad_dates_and_zones_name_the_helper_and_value() {
    let err = render("{{fecha appointment.start}}", &appointment("mañana")).unwrap_err();
    assert_eq!(
        err,
        "`fecha`: `mañana` is not a date: expected RFC 3339 like 2026-11-26T15:30:00-05:00"
    );
    let err = render("{{hora appointment.start}}", &appointment("2026-11-26")).unwrap_err();
    assert!(
        err.starts_with("`hora`: `2026-11-26` has no time of day"),
        "{err}"
    );
    let ctx = in_zone("2026-11-26T15:30:00-05:00", "America/Bogata");
    let err = render("{{hora appointment.start}}", &ctx).unwrap_err();
    assert!(err.contains("`America/Bogata` is not a time zone"), "{err}");
}

#[test]
fn strict_mode_names_the_missing_path() {
    let ctx = json!({"appointment": {"profesional": "Dra. Gómez"}});
    let err = render("Hola {{appointment.paciente}}", &ctx).unwrap_err();
    assert!(
        err.starts_with("`appointment.paciente` is missing"),
        "{err}"
    );
    // Through a helper too: a helper is no way around strict mode.
    let err = render("Hola {{primer_nombre appointment.paciente}}", &ctx).unwrap_err();
    assert!(
        err.starts_with("`appointment.paciente` is missing"),
        "{err}"
    );
    let err = render("{{fecha appointment.start}}", &json!({})).unwrap_err();
    assert!(err.starts_with("`appointment.start` is missing"), "{err}");
    // A multi-line template says where.
    let err = render("Hola\n{{appointment.paciente}}", &ctx).unwrap_err();
    assert!(err.ends_with("(line 2, column 1)"), "{err}");
}

#[test]
fn unknown_helper_is_refused_at_register_with_its_position() {
    let e = refused("Hola {{fechas appointment.start}}");
    assert_eq!(e.message, "unknown helper `fechas`: did you mean `fecha`?");
    assert_eq!((e.line, e.column), (Some(1), Some(8)));

    // Nested in a block on a later line, after accented text (columns count characters).
    let e = refused("Señora:\n  ñandú {{#if (eqq appointment.sede \"norte\")}}sí{{/if}}");
    assert_eq!(e.message, "unknown helper `eqq`: did you mean `eq`?");
    assert_eq!((e.line, e.column), (Some(2), Some(16)));

    let e = refused("a\n{{#each citas}}\n  {{foo this}}\n{{/each}}");
    assert!(
        e.message
            .starts_with("unknown helper `foo`: the helpers are fecha,"),
        "{}",
        e.message
    );
    assert_eq!((e.line, e.column), (Some(3), Some(5)));

    // Built-ins recuerda does not offer are unknown too.
    assert!(refused("{{log appointment}}")
        .message
        .starts_with("unknown helper `log`"));
}

#[test]
fn helpers_called_wrongly_are_refused_at_register() {
    for (source, start) in [
        ("{{fecha}}", "`fecha` takes 1 value, got 0"),
        ("{{pesos a b}}", "`pesos` takes 1 value, got 2"),
        (
            "{{default appointment.sede}}",
            "`default` takes 2 values, got 1",
        ),
        ("{{#hora x}}y{{/hora}}", "`hora` is not a block"),
        (
            "{{#eq a b}}y{{/eq}}",
            "`eq` is not a block: write {{#if (eq",
        ),
        ("{{if a}}", "`if` is a block"),
        ("{{> saludo}}", "partials"),
        (
            "{{mayusculas x fuerte=true}}",
            "`mayusculas` takes no `key=value` options",
        ),
    ] {
        let e = refused(source);
        assert!(e.message.starts_with(start), "{source}: {}", e.message);
        assert!(
            e.line.is_some() && e.column.is_some(),
            "{source}: no position"
        );
    }
}

#[test]
fn syntax_errors_have_a_position() {
    let e = refused("Hola {{appointment.paciente");
    assert!(
        e.message.starts_with("invalid template syntax"),
        "{}",
        e.message
    );
    assert_eq!((e.line, e.column), (Some(1), Some(28)));

    let e = refused("uno\ndos {{#if a}}x{{/each}}");
    assert_eq!(
        e.message,
        "`{{#if}}` is closed by `{{/each}}`: close it with `{{/if}}`"
    );
    assert_eq!(e.line, Some(2));

    // Columns count characters, not bytes.
    let e = refused("ñá {{a \"b}}");
    assert_eq!((e.line, e.column), (Some(1), Some(8)));

    let e = refused("{{#if a}}sin cerrar");
    assert!(e.message.contains("is not closed"), "{}", e.message);
    assert!(e.line.is_some());
}

#[test]
fn no_html_escaping() {
    let ctx = json!({"appointment": {"profesional": "Pérez & Hijos <b>\"Dr.\"</b> 'x'"}});
    assert_eq!(
        render("{{appointment.profesional}}", &ctx).unwrap(),
        "Pérez & Hijos <b>\"Dr.\"</b> 'x'"
    );
    assert_eq!(
        render("{{mayusculas appointment.profesional}}", &ctx).unwrap(),
        "PÉREZ & HIJOS <B>\"DR.\"</B> 'X'"
    );
}

#[test]
fn pesos_formatting() {
    for (amount, expected) in [
        (json!(0), "$0"),
        (json!(999), "$999"),
        (json!(1000), "$1.000"),
        (json!(1250000), "$1.250.000"),
        (json!("100000"), "$100.000"),
        (json!("1250000.0"), "$1.250.000"),
        (json!(-5000), "-$5.000"),
        (json!(1250000.4), "$1.250.000"),
    ] {
        let ctx = json!({"appointment": {"valor": amount}});
        assert_eq!(
            render("{{pesos appointment.valor}}", &ctx).unwrap(),
            expected,
            "{amount}"
        );
    }
    let ctx = json!({"appointment": {"valor": "cien mil"}});
    let err = render("{{pesos appointment.valor}}", &ctx).unwrap_err();
    assert!(
        err.starts_with("`pesos`: `cien mil` is not an amount"),
        "{err}"
    );
}

#[test]
fn names_with_accents_and_enye() {
    let ctx = json!({"appointment": {"paciente": "  ÑUÑO ÁLVAREZ de la peña ", "otro": "íñigo"}});
    assert_eq!(
        render("{{primer_nombre appointment.paciente}}", &ctx).unwrap(),
        "Ñuño"
    );
    assert_eq!(
        render("{{capitalizar appointment.paciente}}", &ctx).unwrap(),
        "Ñuño Álvarez de la Peña"
    );
    assert_eq!(
        render("{{primer_nombre appointment.otro}}", &ctx).unwrap(),
        "Íñigo"
    );
    let ctx = appointment("2026-11-26T15:30:00-05:00");
    assert_eq!(
        render("{{primer_nombre appointment.paciente}}", &ctx).unwrap(),
        "Carlos"
    );
    assert_eq!(
        render("{{capitalizar \"carlos PÉREZ\"}}", &ctx).unwrap(),
        "Carlos Pérez"
    );
    assert_eq!(
        render(
            "{{mayusculas \"señor núñez\"}}|{{minusculas \"SEÑOR NÚÑEZ\"}}",
            &ctx
        )
        .unwrap(),
        "SEÑOR NÚÑEZ|señor núñez"
    );
}

#[test]
fn default_covers_missing_empty_and_present() {
    let source = "{{default appointment.sede \"principal\"}}";
    for (appointment, expected) in [
        (json!({}), "principal"),
        (json!({"sede": null}), "principal"),
        (json!({"sede": ""}), "principal"),
        (json!({"sede": "   "}), "principal"),
        (json!({"sede": "norte"}), "norte"),
    ] {
        let ctx = json!({ "appointment": appointment });
        assert_eq!(render(source, &ctx).unwrap(), expected, "{ctx}");
    }
    // Even when the parent object is missing, and as a value for another helper.
    assert_eq!(render(source, &json!({})).unwrap(), "principal");
    assert_eq!(
        render(
            "{{mayusculas (default appointment.sede \"principal\")}}",
            &json!({})
        )
        .unwrap(),
        "PRINCIPAL"
    );
}

#[test]
fn eq_inside_if() {
    let source = "{{#if (eq appointment.sede \"norte\")}}Calle 100{{else}}Centro{{/if}}";
    let at = |sede: Value| json!({"appointment": {"sede": sede}});
    assert_eq!(render(source, &at(json!("norte"))).unwrap(), "Calle 100");
    assert_eq!(render(source, &at(json!("sur"))).unwrap(), "Centro");
    // A missing value compares as nothing, as `#if` treats it.
    assert_eq!(
        render(source, &json!({"appointment": {}})).unwrap(),
        "Centro"
    );
    assert_eq!(
        render(
            "{{#if (eq appointment.n 2)}}dos{{/if}}",
            &json!({"appointment": {"n": 2.0}})
        )
        .unwrap(),
        "dos"
    );
}

#[test]
fn loops_and_root_values() {
    let ctx = json!({
        "rule": {"timezone": "America/Bogota"},
        "citas": [
            {"paciente": "ana", "start": "2026-11-26T08:00:00-05:00"},
            {"paciente": "luis", "start": "2026-11-26T20:30:00Z"},
        ]
    });
    let source = "{{#each citas}}{{capitalizar paciente}} {{hora start}}{{#unless @last}}, {{/unless}}{{/each}}";
    assert_eq!(
        render(source, &ctx).unwrap(),
        "Ana 8:00 a. m., Luis 3:30 p. m."
    );
}

#[test]
fn templates_are_kept_by_key() {
    let mut renderer = Renderer::default();
    renderer
        .register("990/1", "{{primer_nombre appointment.paciente}}")
        .unwrap();
    renderer
        .register("990/3", "{{fecha appointment.start}}")
        .unwrap();
    let ctx = appointment("2026-11-26T15:30:00-05:00");
    assert_eq!(renderer.render("990/1", &ctx).unwrap(), "Carlos");
    assert_eq!(
        renderer.render("990/3", &ctx).unwrap(),
        "jueves 26 de noviembre"
    );
    let err = renderer.render("nope", &ctx).unwrap_err();
    assert!(
        err.message.contains("template `nope` is not registered"),
        "{}",
        err.message
    );
    // A refused template does not replace the one registered under its key.
    assert!(renderer.register("990/1", "{{nope x}}").is_err());
    assert_eq!(renderer.render("990/1", &ctx).unwrap(), "Carlos");
}

#[test]
fn helper_names_are_published() {
    for name in [
        "fecha",
        "fecha_corta",
        "hora",
        "primer_nombre",
        "mayusculas",
        "minusculas",
        "capitalizar",
        "pesos",
        "default",
        "eq",
    ] {
        assert!(HELPERS.contains(&name), "{name}");
    }
}

#[test]
fn check_variable_refuses_what_the_provider_cannot_carry() {
    assert!(check_variable("Carlos").is_ok());
    assert!(check_variable(" jueves 26 de noviembre ").is_ok());
    for bad in ["", "   ", "\n\t", "Carlos [VIP]", "a]", "[b"] {
        assert!(check_variable(bad).is_err(), "{bad:?} should be refused");
    }
    let err = check_variable("Carlos [VIP]").unwrap_err();
    assert!(err.contains("`Carlos [VIP]` holds `[`"), "{err}");
}

#[test]
fn placeholders_and_their_variables() {
    let body = "Hola *{1}*, su cita con *{2}* es el *{3}* a las *{4}*. {1}: responda 1 o 2.";
    assert_eq!(
        placeholders(body).into_iter().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let vars: Vec<String> = [
        "Carlos",
        "Dra. Gómez",
        "jueves 26 de noviembre",
        "3:30 p. m.",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        place_variables(body, &vars),
        "Hola *Carlos*, su cita con *Dra. Gómez* es el *jueves 26 de noviembre* a las *3:30 p. m.*. Carlos: responda 1 o 2."
    );

    let twelve: String = (1..=12).map(|n| format!("<{{{n}}}>")).collect();
    assert_eq!(placeholders(&twelve), (1..=12).collect());
    let vars: Vec<String> = (1..=12).map(|n| format!("v{n}")).collect();
    assert_eq!(
        place_variables(&twelve, &vars),
        "<v1><v2><v3><v4><v5><v6><v7><v8><v9><v10><v11><v12>"
    );

    // Other braces are text; a variable holding `{2}` is not placed again; a `{n}` with no
    // variable stays.
    let body = "{} {0} {01} {x} {{1}} {1 } {2} {3}";
    assert_eq!(
        placeholders(body).into_iter().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        place_variables(body, &["{2}".to_owned(), "dos".to_owned()]),
        "{} {0} {01} {x} {{2}} {1 } dos {3}"
    );
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("2026-11-26T15:30:00-05:00"),
            Just("2026-11-26T20:30:00Z"),
            Just("2026-11-26 15:30"),
            Just("1250000.5"),
            Just("-0"),
            Just("Europe/Madrid"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}|start|sede|timezone", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn render_never_panics(source in ".{0,40}", ctx in any_json()) {
        let mut renderer = Renderer::new();
        if renderer.register("t", &source).is_ok() {
            let _ = renderer.render("t", &ctx);
        }
    }

    #[test]
    fn helpers_never_panic(value in any_json(), zone in any_json(), helper in prop::sample::select(HELPERS)) {
        let mut renderer = Renderer::new();
        let source = match helper {
            "default" | "eq" | "lookup" => format!("{{{{{helper} x.v x.w}}}}"),
            "if" | "unless" | "each" | "with" => format!("{{{{#{helper} x.v}}}}a{{{{/{helper}}}}}"),
            _ => format!("{{{{{helper} x.v}}}}"),
        };
        renderer.register("t", &source).unwrap();
        let ctx = json!({"x": {"v": value, "w": "b"}, "rule": {"timezone": zone}});
        let _ = renderer.render("t", &ctx);
    }

    #[test]
    fn place_variables_never_panics(body in "(\\{[0-9]{0,3}\\}?|.){0,40}", vars in prop::collection::vec(".{0,8}", 0..14)) {
        let _ = place_variables(&body, &vars);
        let _ = placeholders(&body);
    }

    #[test]
    fn place_variables_fills_every_placeholder_it_has_a_value_for(
        body in "(\\{[0-9]{0,3}\\}?|.){0,40}",
        vars in prop::collection::vec("[a-zñ ]{1,8}", 0..14),
    ) {
        // Letters cannot form a new `{n}`, so what is left is what had no variable.
        let left = placeholders(&place_variables(&body, &vars));
        prop_assert!(left.iter().all(|&n| n > vars.len()), "{left:?}");
    }
}
