//! The sequence diagrams show the same steps as the code: every `Note over LCM: <Step>` line,
//! in order, must equal the sequence the executor walks.

use lcm::engine::sequence::{Step, full_cleanup, happy_path};

fn steps_in(file: &str) -> Vec<String> {
    let path = format!("{}/sequence-diagrams/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(text.contains("```mermaid"), "{file} holds a Mermaid block");
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Note over LCM:"))
        .map(|step| step.trim().to_owned())
        .collect()
}

fn names(steps: Vec<Step>) -> Vec<String> {
    steps.into_iter().map(|s| s.name().to_owned()).collect()
}

#[test]
fn the_happy_path_diagram_matches_the_sequence() {
    assert_eq!(steps_in("happy-path.md"), names(happy_path(false)));
}

#[test]
fn the_vnf_diagram_matches_the_sequence() {
    assert_eq!(steps_in("vnf-branch.md"), names(happy_path(true)));
}

#[test]
fn the_failure_diagram_names_only_real_steps() {
    let all = names(happy_path(true));
    let steps = steps_in("failure-and-restore.md");
    assert!(!steps.is_empty());
    for step in steps {
        assert!(
            all.contains(&step),
            "'{step}' is not a step of the sequence"
        );
    }
}

#[test]
fn the_abort_diagram_draws_the_cleanup_path() {
    assert_eq!(steps_in("abort-and-cleanup.md"), names(full_cleanup()));
}
