//! Wake-up messages: the hints the scripts publish on the wake channel
//! ([`Keys::wake_channel`]) so that the dispatcher, lease long-polls and `/wait` callers
//! act at once instead of at their next poll. `lua/lib.lua` builds them (`wake_new`,
//! `wake_assigned`, `wake_done`); [`Wakeup::parse`] reads them, and the unit test in
//! [`super::scripts`] checks the two agree. Pub/sub is lossy: they are hints only.

use super::keys::Keys;

/// One wake-up message, borrowed from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup<'a> {
    /// `new <prefix>`: tasks of `queue` became pending (or its settings changed).
    New {
        /// The queue.
        queue: &'a str,
    },
    /// `assigned <prefix> <node>`: the dispatcher put tasks into `node`'s inbox.
    Assigned {
        /// The queue.
        queue: &'a str,
        /// The node.
        node: &'a str,
    },
    /// `done <prefix> <node> <id> [<id> ...]`: tasks ended (one message per report batch
    /// and node; `node` is empty when no node ran them).
    Done {
        /// The queue.
        queue: &'a str,
        /// The node that ran them, or empty.
        node: &'a str,
        /// The tasks that ended.
        tasks: Vec<&'a str>,
    },
}

impl<'a> Wakeup<'a> {
    /// Reads a message of the namespace of `keys`; `None` for anything else (another
    /// namespace, an unknown kind, a missing field).
    pub fn parse(keys: &Keys, msg: &'a str) -> Option<Wakeup<'a>> {
        let mut parts = msg.split(' ');
        let kind = parts.next()?;
        let queue = keys.queue_of_prefix(parts.next()?)?;
        match kind {
            "new" => Some(Wakeup::New { queue }),
            "assigned" => Some(Wakeup::Assigned {
                queue,
                node: parts.next()?,
            }),
            "done" => Some(Wakeup::Done {
                queue,
                node: parts.next().unwrap_or(""),
                tasks: parts.collect(),
            }),
            _ => None,
        }
    }

    /// The queue the message is about.
    pub fn queue(&self) -> &'a str {
        match self {
            Wakeup::New { queue } | Wakeup::Assigned { queue, .. } | Wakeup::Done { queue, .. } => {
                queue
            }
        }
    }

    /// The message as published in the namespace of `keys`.
    pub fn message(&self, keys: &Keys) -> String {
        let p = keys.queue_prefix(self.queue());
        match self {
            Wakeup::New { .. } => format!("new {p}"),
            Wakeup::Assigned { node, .. } => format!("assigned {p} {node}"),
            Wakeup::Done { node, tasks, .. } => format!("done {p} {node} {}", tasks.join(" ")),
        }
    }
}

/// One wake-up of each shape, in the order `lua/lib.lua`'s builders are checked.
#[cfg(test)]
pub(super) fn examples() -> Vec<Wakeup<'static>> {
    vec![
        Wakeup::New { queue: "q.1" },
        Wakeup::Assigned {
            queue: "q.1",
            node: "n1",
        },
        Wakeup::Done {
            queue: "q.1",
            node: "n1",
            tasks: vec!["a.q.1", "b.q.1"],
        },
        Wakeup::Done {
            queue: "q.1",
            node: "",
            tasks: vec!["a.q.1"],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wakeup_reads_back_from_its_message() {
        let k = Keys::new("m");
        for w in examples() {
            assert_eq!(Wakeup::parse(&k, &w.message(&k)), Some(w.clone()), "{w:?}");
        }
    }

    #[test]
    fn messages_of_another_namespace_or_kind_are_not_wakeups() {
        let k = Keys::new("m");
        for msg in [
            "",
            "new",
            "new other:{q}:",
            "gone m:{q}:",
            "assigned m:{q}:",
        ] {
            assert_eq!(Wakeup::parse(&k, msg), None, "{msg:?}");
        }
    }
}
