//! StateGraph without a model: validation, routing, fan-out and joins, retries, interrupts,
//! resume, forks and checkpoint growth, on checkpoints in a real SQLite file.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use state_pack::graph::{
    reduce, Checkpointer, CompiledGraph, Goto, GraphError, GraphEvent, GraphProblem, GraphState,
    NodeError, NodeInput, NodeOptions, RetryPolicy, RunStatus, StateGraph, END, START,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Notes {
    log: Vec<String>,
    rounds: u32,
    verdict: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct NotesUpdate {
    log: Option<Vec<String>>,
    rounds: Option<u32>,
    verdict: Option<String>,
}

impl GraphState for Notes {
    type Update = NotesUpdate;
    fn merge(&mut self, u: NotesUpdate) {
        reduce::append(&mut self.log, u.log);
        reduce::add(&mut self.rounds, u.rounds);
        reduce::last(&mut self.verdict, u.verdict);
    }
}

fn log(line: impl Into<String>) -> NotesUpdate {
    NotesUpdate {
        log: Some(vec![line.into()]),
        ..Default::default()
    }
}

fn checkpointer() -> (tempfile::TempDir, Checkpointer) {
    let dir = tempfile::tempdir().unwrap();
    let c =
        Checkpointer::open_location(&common::db::location(&dir.path().join("graph.db"))).unwrap();
    (dir, c)
}

/// researcher -> reviewer -> (researcher again | END) until three rounds.
fn review_loop() -> StateGraph<Notes> {
    StateGraph::new()
        .add_node("researcher", |i: NodeInput<Notes>| async move {
            Ok(NotesUpdate {
                log: Some(vec![format!("draft {}", i.state.rounds + 1)]),
                rounds: Some(1),
                ..Default::default()
            })
        })
        .add_node("reviewer", |i: NodeInput<Notes>| async move {
            let verdict = if i.state.rounds >= 3 {
                "approve"
            } else {
                "revise"
            };
            Ok(NotesUpdate {
                log: Some(vec![format!("review {}: {verdict}", i.state.rounds)]),
                verdict: Some(verdict.into()),
                ..Default::default()
            })
        })
        .add_edge(START, "researcher")
        .add_edge("researcher", "reviewer")
        .add_conditional_edges(
            "reviewer",
            |s: &Notes| {
                if s.verdict == "approve" {
                    END.into()
                } else {
                    "researcher".into()
                }
            },
            &["researcher", END],
        )
}

#[tokio::test]
async fn a_conditional_loop_runs_to_end_with_a_checkpoint_per_step() {
    let (_dir, c) = checkpointer();
    let g = review_loop().compile(c).unwrap();
    let mut events = Vec::new();
    let run = g
        .stream("t1", Notes::default(), |e| events.push(e))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Finished);
    assert_eq!(
        run.state.log,
        [
            "draft 1",
            "review 1: revise",
            "draft 2",
            "review 2: revise",
            "draft 3",
            "review 3: approve"
        ]
    );
    assert_eq!(run.steps, 6);
    let history = g.history("t1").unwrap();
    // The input, then one checkpoint per super-step, newest first, each the child of the next.
    assert_eq!(history.len(), 7);
    assert!(history[0].next.is_empty());
    assert_eq!(history.last().unwrap().step, -1);
    for pair in history.windows(2) {
        assert_eq!(pair[0].parent, Some(pair[1].id));
    }
    // The state at any checkpoint is rebuilt from the stored updates.
    assert_eq!(g.state_at(history[2].id).unwrap().log.len(), 4);
    assert_eq!(g.state("t1").unwrap().0, run.state);
    let started = events
        .iter()
        .filter(|e| matches!(e, GraphEvent::NodeStarted { .. }))
        .count();
    let updated = events
        .iter()
        .filter(|e| matches!(e, GraphEvent::StateUpdated(_)))
        .count();
    assert_eq!((started, updated), (6, 6));
    // A second invoke on the same thread is refused, not appended to its history.
    assert!(matches!(
        g.invoke("t1", Notes::default()).await,
        Err(GraphError::ThreadExists(_))
    ));
}

#[test]
fn compile_refuses_broken_graphs_with_every_problem_named() {
    let (_dir, c) = checkpointer();
    let noop = |_: NodeInput<Notes>| async { Ok(NotesUpdate::default()) };
    let err = StateGraph::<Notes>::new()
        .add_node("a", noop)
        .add_node("a", noop)
        .add_node("island", noop)
        .add_node("sink", noop)
        .add_node(END, noop)
        .add_edge(START, "a")
        .add_edge("a", "nowhere")
        .add_edge("a", "sink")
        .add_edge("a", END)
        .interrupt_before(&["ghost"])
        .compile(c)
        .err()
        .unwrap();
    let GraphError::Invalid { problems } = &err else {
        panic!("{err}")
    };
    for p in [
        GraphProblem::DuplicateNode("a".into()),
        GraphProblem::ReservedName(END.into()),
        GraphProblem::UnknownNode {
            from: "a".into(),
            to: "nowhere".into(),
            unknown: "nowhere".into(),
        },
        GraphProblem::Unreachable("island".into()),
        GraphProblem::NoWayToEnd("sink".into()),
        GraphProblem::UnknownInterrupt("ghost".into()),
    ] {
        assert!(problems.contains(&p), "{p:?} missing from {problems:?}");
    }
    assert!(err.to_string().contains("cannot be reached"), "{err}");
    let (_dir, c) = checkpointer();
    let err = StateGraph::<Notes>::new()
        .add_node("a", noop)
        .add_edge("a", END)
        .compile(c)
        .err()
        .unwrap();
    assert!(
        matches!(&err, GraphError::Invalid { problems } if problems.contains(&GraphProblem::NoEntry))
    );
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct MapReduce {
    topics: Vec<String>,
    summaries: Vec<String>,
    report: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MapReduceUpdate {
    topics: Option<Vec<String>>,
    summaries: Option<Vec<String>>,
    report: Option<String>,
}

impl GraphState for MapReduce {
    type Update = MapReduceUpdate;
    fn merge(&mut self, u: MapReduceUpdate) {
        reduce::append(&mut self.topics, u.topics);
        reduce::append(&mut self.summaries, u.summaries);
        reduce::last(&mut self.report, u.report);
    }
}

#[tokio::test]
async fn fan_out_with_send_runs_branches_in_one_step_and_joins_before_the_next() {
    let (_dir, c) = checkpointer();
    let g = StateGraph::<MapReduce>::new()
        .add_node("plan", |_| async {
            Ok(MapReduceUpdate {
                topics: Some(vec!["liability".into(), "notice".into(), "fees".into()]),
                ..Default::default()
            })
        })
        .add_node("summarize", |i: NodeInput<MapReduce>| async move {
            let topic = i.arg.and_then(|a| a.as_str().map(str::to_string));
            // The slowest branch first: the merge order must not depend on timing.
            if topic.as_deref() == Some("liability") {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(MapReduceUpdate {
                summaries: Some(vec![format!("summary of {}", topic.ok_or("no topic")?)]),
                ..Default::default()
            })
        })
        // A second branch of a different length, joined with the map by add_join.
        .add_node("audit", |_| async {
            Ok(MapReduceUpdate {
                summaries: Some(vec!["audit".into()]),
                ..Default::default()
            })
        })
        .add_node("audit2", |_| async { Ok(MapReduceUpdate::default()) })
        .add_node("reduce", |i: NodeInput<MapReduce>| async move {
            Ok(MapReduceUpdate {
                report: Some(i.state.summaries.join("; ")),
                ..Default::default()
            })
        })
        .add_edge(START, "plan")
        .add_conditional_edges(
            "plan",
            |s: &MapReduce| {
                let mut all: Vec<Goto> = s
                    .topics
                    .iter()
                    .map(|t| Goto::Send("summarize".into(), t.clone().into()))
                    .collect();
                all.push("audit".into());
                Goto::Many(all)
            },
            &["summarize", "audit"],
        )
        .add_edge("audit", "audit2")
        .add_join(&["summarize", "audit2"], "reduce")
        .add_edge("reduce", END)
        .compile(c)
        .unwrap();
    let run = g.invoke("mr", MapReduce::default()).await.unwrap();
    assert_eq!(run.status, RunStatus::Finished);
    assert_eq!(
        run.state.report,
        "summary of liability; summary of notice; summary of fees; audit"
    );
    let history = g.history("mr").unwrap();
    let steps: Vec<Vec<String>> = history.iter().rev().map(|c| c.wrote.clone()).collect();
    assert_eq!(
        steps,
        [
            vec![],
            vec!["plan".to_string()],
            vec![
                "summarize".into(),
                "summarize".into(),
                "summarize".into(),
                "audit".into()
            ],
            vec!["audit2".into()],
            vec!["reduce".into()],
        ]
    );
}

/// The branches of a `Send` fan-out run at the same time, not one after another: every
/// branch has started before any has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_branches_overlap_in_time() {
    let (_dir, c) = checkpointer();
    let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = spans.clone();
    let g = StateGraph::<MapReduce>::new()
        .add_node("plan", |_| async {
            Ok(MapReduceUpdate {
                topics: Some((0..4).map(|i| format!("topic {i}")).collect()),
                ..Default::default()
            })
        })
        .add_node("summarize", move |i: NodeInput<MapReduce>| {
            let log = log.clone();
            async move {
                let start = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(100)).await;
                log.lock().unwrap().push((start, std::time::Instant::now()));
                Ok(MapReduceUpdate {
                    summaries: Some(vec![i.arg.map(|a| a.to_string()).unwrap_or_default()]),
                    ..Default::default()
                })
            }
        })
        .add_edge(START, "plan")
        .add_conditional_edges(
            "plan",
            |s: &MapReduce| {
                Goto::Many(
                    s.topics
                        .iter()
                        .map(|t| Goto::Send("summarize".into(), t.clone().into()))
                        .collect(),
                )
            },
            &["summarize"],
        )
        .add_edge("summarize", END)
        .compile(c)
        .unwrap();
    let run = g.invoke("overlap", MapReduce::default()).await.unwrap();
    assert_eq!(run.state.summaries.len(), 4);
    let spans = spans.lock().unwrap();
    assert_eq!(spans.len(), 4);
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_start < first_end,
        "a branch started only after another had finished: they ran one after another"
    );
}

fn boom() -> Result<NotesUpdate, NodeError> {
    panic!("node bug")
}

#[tokio::test]
async fn failing_nodes_are_retried_and_panics_and_timeouts_are_contained() {
    let (_dir, c) = checkpointer();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let retry = NodeOptions {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(1),
        },
        timeout: None,
    };
    let g = StateGraph::<Notes>::new()
        .add_node_with(
            "flaky",
            state_pack::graph::FnNode::new(move |_: NodeInput<Notes>| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err::<NotesUpdate, NodeError>(format!("transient {n}").into())
                    } else {
                        Ok(log("ok"))
                    }
                }
            }),
            retry,
        )
        .add_edge(START, "flaky")
        .add_edge("flaky", END)
        .compile(c)
        .unwrap();
    let mut retries = 0;
    let run = g
        .stream("f", Notes::default(), |e| {
            retries += usize::from(matches!(e, GraphEvent::NodeRetrying { .. }))
        })
        .await
        .unwrap();
    assert_eq!(run.state.log, ["ok"]);
    assert_eq!((calls.load(Ordering::SeqCst), retries), (3, 2));

    let (_dir, c) = checkpointer();
    let g = StateGraph::<Notes>::new()
        .add_node("first", |_| async { Ok(log("first")) })
        .add_node("boom", |_: NodeInput<Notes>| async { boom() })
        .add_edge(START, "first")
        .add_edge("first", "boom")
        .add_edge("boom", END)
        .compile(c)
        .unwrap();
    let err = g.invoke("p", Notes::default()).await.unwrap_err();
    let GraphError::Node {
        node, checkpoint, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(node, "boom");
    assert!(err.to_string().contains("panicked: node bug"), "{err}");
    // The step before the panic is checkpointed: a resume starts from there.
    assert_eq!(g.state_at(*checkpoint).unwrap().log, ["first"]);

    let (_dir, c) = checkpointer();
    let g = StateGraph::<Notes>::new()
        .add_node_with(
            "slow",
            state_pack::graph::FnNode::new(|_: NodeInput<Notes>| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(NotesUpdate::default())
            }),
            NodeOptions {
                timeout: Some(Duration::from_millis(20)),
                ..Default::default()
            },
        )
        .add_edge(START, "slow")
        .add_edge("slow", END)
        .compile(c)
        .unwrap();
    let err = g.invoke("s", Notes::default()).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn the_recursion_limit_stops_an_endless_loop() {
    let (_dir, c) = checkpointer();
    let g = StateGraph::<Notes>::new()
        .add_node("spin", |_| async { Ok(log("again")) })
        .add_edge(START, "spin")
        .add_conditional_edges("spin", |_: &Notes| "spin".into(), &["spin", END])
        .recursion_limit(5)
        .compile(c)
        .unwrap();
    let err = g.invoke("loop", Notes::default()).await.unwrap_err();
    let GraphError::RecursionLimit { limit, checkpoint } = err else {
        panic!("{err}")
    };
    assert_eq!(limit, 5);
    assert_eq!(g.state_at(checkpoint).unwrap().log.len(), 5);
}

#[tokio::test]
async fn an_interrupt_pauses_before_a_node_and_resumes_with_human_input() {
    let (_dir, c) = checkpointer();
    let g = review_loop()
        .interrupt_before(&["reviewer"])
        .compile(c)
        .unwrap();
    let run = g.invoke("h", Notes::default()).await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::InterruptedBefore(vec!["reviewer".into()])
    );
    assert_eq!(run.state.log, ["draft 1"]);
    // The human adds two rounds' worth of work: the reviewer then approves at once.
    let human = NotesUpdate {
        log: Some(vec!["human: done two more rounds by hand".into()]),
        rounds: Some(2),
        ..Default::default()
    };
    let run = g.resume("h", Some(human)).await.unwrap();
    assert_eq!(run.status, RunStatus::Finished);
    assert_eq!(
        run.state.log,
        [
            "draft 1",
            "human: done two more rounds by hand",
            "review 3: approve"
        ]
    );
    let sources: Vec<String> = g
        .history("h")
        .unwrap()
        .iter()
        .rev()
        .map(|c| format!("{:?}", c.source))
        .collect();
    assert_eq!(sources, ["Input", "Loop", "Update", "Loop"]);
}

#[tokio::test]
async fn an_interrupt_after_a_node_keeps_its_update_and_resumes_without_input() {
    let (_dir, c) = checkpointer();
    let g = review_loop()
        .interrupt_after(&["researcher"])
        .compile(c)
        .unwrap();
    let mut run = g.invoke("a", Notes::default()).await.unwrap();
    let mut pauses = 0;
    while let RunStatus::InterruptedAfter(nodes) = &run.status {
        assert_eq!(nodes, &["researcher"]);
        // The researcher's update is in the state and the checkpoint before the pause.
        assert_eq!(
            run.state.log.last().unwrap(),
            &format!("draft {}", pauses + 1)
        );
        assert_eq!(g.state("a").unwrap().0, run.state);
        pauses += 1;
        run = g.resume("a", None).await.unwrap();
    }
    assert_eq!(run.status, RunStatus::Finished);
    assert_eq!(pauses, 3);
    assert_eq!(run.state.log.len(), 6);
}

#[tokio::test]
async fn forking_an_earlier_checkpoint_leaves_the_original_history_intact() {
    let (_dir, c) = checkpointer();
    let g = review_loop().compile(c).unwrap();
    let original = g.invoke("tt", Notes::default()).await.unwrap();
    let before: Vec<_> = g.history("tt").unwrap();
    // Back to the first review (step 1), and count one more round done there.
    let first_review = before.iter().find(|c| c.step == 1).unwrap().id;
    let fork = g
        .fork(
            first_review,
            Some(NotesUpdate {
                rounds: Some(1),
                log: Some(vec!["forked".into()]),
                ..Default::default()
            }),
        )
        .unwrap();
    let forked = g.resume("tt", None).await.unwrap();
    // The fork's tasks are those due after the first review: the researcher writes the
    // third draft and the reviewer approves it, a round earlier than the original.
    assert_eq!(
        forked.state.log,
        [
            "draft 1",
            "review 1: revise",
            "forked",
            "draft 3",
            "review 3: approve"
        ]
    );
    assert_eq!(original.state.log.len(), 6);
    let after = g.history("tt").unwrap();
    // Every original checkpoint is still there with the same state.
    for c in &before {
        assert!(after.contains(c), "{c:?} lost");
    }
    assert_eq!(g.state_at(original.checkpoint).unwrap(), original.state);
    assert!(after
        .iter()
        .any(|c| c.parent == Some(first_review) && c.id == fork));
    assert_eq!(after.len(), before.len() + 1 + 2);
}

#[tokio::test]
async fn checkpoints_store_updates_so_storage_grows_linearly() {
    let (_dir, c) = checkpointer();
    let g = StateGraph::<Notes>::new()
        .add_node("append", |i: NodeInput<Notes>| async move {
            Ok(log(format!(
                "message {:04} with a fixed-size body",
                i.state.log.len()
            )))
        })
        .add_edge(START, "append")
        .add_conditional_edges(
            "append",
            |s: &Notes| {
                if s.log.len() < 1000 {
                    "append".into()
                } else {
                    END.into()
                }
            },
            &["append", END],
        )
        .recursion_limit(2000)
        .compile(c)
        .unwrap();
    let mut bytes_at = Vec::new();
    let run = g.invoke("grow", Notes::default()).await.unwrap();
    assert_eq!(run.state.log.len(), 1000);
    let mut history = g.history("grow").unwrap();
    history.reverse();
    let mut total = 0u64;
    for c in &history {
        total += c.bytes;
        if [9, 99, 999].contains(&c.step) {
            bytes_at.push((c.step + 1, total));
        }
    }
    println!("checkpoint bytes after (steps, bytes): {bytes_at:?}");
    let per_step = |i: usize| bytes_at[i].1 as f64 / bytes_at[i].0 as f64;
    // Full snapshots would make 1,000 steps cost ~50x per step what 10 steps cost; updates
    // cost the same per step however long the history.
    assert!(per_step(2) < 1.5 * per_step(0), "{bytes_at:?}");
    assert_eq!(g.checkpointer().thread_bytes("grow").unwrap(), total);
}

#[test]
fn the_graph_draws_itself_as_mermaid() {
    let (_dir, c) = checkpointer();
    let g: CompiledGraph<Notes> = review_loop()
        .interrupt_before(&["reviewer"])
        .compile(c)
        .unwrap();
    let m = g.mermaid();
    assert!(m.starts_with("flowchart TD\n"), "{m}");
    for line in [
        "__start__ --> researcher",
        "researcher --> reviewer",
        "reviewer -.-> researcher",
        "reviewer -.-> __end__",
        "reviewer[\"⏸ reviewer\"]",
    ] {
        assert!(m.contains(line), "{line:?} not in\n{m}");
    }
}
