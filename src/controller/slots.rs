//! Mover slots: the cap on movers running at once (cluster-wide and per namespace), and who
//! gets a slot that frees: the longest-waiting node of each namespace, namespaces in turn, so
//! that one namespace with many Snapshots cannot hold every slot or starve the others.
//!
//! Pure bookkeeping: the caller says which movers run (from the Job store) and what time it
//! is; [`Slots`] remembers who waits and which Jobs it let start that the store may not show
//! yet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A waiter not seen again for this long is gone: waiting resources look again every 10 s.
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The kind of resource a mover works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Snapshot,
    SnapshotRestore,
}

impl Kind {
    /// The resource's kind, as the API server spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Snapshot => "Snapshot",
            Self::SnapshotRestore => "SnapshotRestore",
        }
    }

    /// The kind spelled `name`, if it is one of these.
    pub fn of(name: &str) -> Option<Self> {
        [Self::Snapshot, Self::SnapshotRestore]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// A resource whose movers wait in line for slots.
pub trait Queued: kube::Resource<DynamicType = ()> {
    const KIND: Kind;
}

impl Queued for crate::api::Snapshot {
    const KIND: Kind = Kind::Snapshot;
}

impl Queued for crate::api::SnapshotRestore {
    const KIND: Kind = Kind::SnapshotRestore;
}

/// Something that wants a slot: one node of one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claimant {
    pub namespace: String,
    pub kind: Kind,
    pub name: String,
    pub node: String,
}

impl Claimant {
    /// The node `node` of `object`.
    pub fn of<K: Queued>(object: &K, node: &str) -> Self {
        let meta = object.meta();
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            kind: K::KIND,
            name: meta.name.clone().unwrap_or_default(),
            node: node.to_owned(),
        }
    }
}

/// A running mover: its namespace and Job name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub namespace: String,
    pub job: String,
}

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_namespace: usize,
}

#[derive(Debug, Clone)]
struct Waiting {
    /// The Job it would start.
    job: Busy,
    since: Instant,
    seen: Instant,
}

/// The waiting line and the Jobs started but perhaps not yet in the store.
#[derive(Debug, Default)]
pub struct Slots {
    waiting: BTreeMap<Claimant, Waiting>,
    started: Vec<(Busy, Instant)>,
}

impl Slots {
    /// Asks for a slot for `who` to start the Job `job`: true if it may start it now (call
    /// [`Slots::started`] once it has), else it waits in line.
    pub fn request(
        &mut self,
        who: &Claimant,
        job: &Busy,
        running: &[Busy],
        limits: Limits,
        now: Instant,
    ) -> bool {
        self.forget_old(running, now);
        if self.started.iter().any(|(started, _)| started == job) {
            // Granted already; its Job is not in the store yet.
            return true;
        }
        self.waiting
            .entry(who.clone())
            .and_modify(|w| w.seen = now)
            .or_insert(Waiting {
                job: job.clone(),
                since: now,
                seen: now,
            });
        let busy = self.busy(running);
        let granted = self.next_in_line(&busy, limits);
        if granted.contains(who) {
            self.waiting.remove(who);
            true
        } else {
            false
        }
    }

    /// Forgets the Jobs recorded as started that the store shows now (`in_store`), running
    /// or finished: from now on the store counts them. One that ended before any request
    /// saw it running counted as busy until [`FORGET_AFTER`] otherwise.
    pub fn shown(&mut self, in_store: impl Fn(&Busy) -> bool) {
        self.started.retain(|(job, _)| !in_store(job));
    }

    /// Records a mover Job just created, which the store may show only later.
    pub fn started(&mut self, job: Busy, now: Instant) {
        if !self.started.iter().any(|(started, _)| *started == job) {
            self.started.push((job, now));
        }
    }

    /// Gives back the slot granted for `job`, which will not start after all.
    pub fn unused(&mut self, job: &Busy) {
        self.started.retain(|(started, _)| started != job);
    }

    /// Takes `who` out of the line; whether it was in it.
    pub fn leave(&mut self, who: &Claimant) -> bool {
        self.waiting.remove(who).is_some()
    }

    /// Keeps only the waiters `keep` approves of (their resources still exist).
    pub fn retain(&mut self, mut keep: impl FnMut(&Claimant) -> bool) {
        self.waiting.retain(|who, _| keep(who));
    }

    /// Who would get the slots free now, in order (after a mover finished: wake them).
    pub fn next(&mut self, running: &[Busy], limits: Limits, now: Instant) -> Vec<Claimant> {
        self.forget_old(running, now);
        let busy = self.busy(running);
        self.next_in_line(&busy, limits)
    }

    fn forget_old(&mut self, running: &[Busy], now: Instant) {
        // A waiter whose Job runs has been served (by an earlier grant).
        self.waiting
            .retain(|_, w| now.duration_since(w.seen) < FORGET_AFTER && !running.contains(&w.job));
        // A started Job is counted from the store once it shows there; one that never shows
        // (its creation failed after all) stops counting after a while.
        self.started
            .retain(|(job, at)| !running.contains(job) && now.duration_since(*at) < FORGET_AFTER);
    }

    fn busy(&self, running: &[Busy]) -> Vec<String> {
        running
            .iter()
            .chain(self.started.iter().map(|(job, _)| job))
            .map(|b| b.namespace.clone())
            .collect()
    }

    /// The waiters that get the free slots: per namespace oldest first, namespaces in turn
    /// (the namespace whose head waited longest first), none beyond a namespace's cap.
    fn next_in_line(&self, busy: &[String], limits: Limits) -> Vec<Claimant> {
        let mut free = limits.total.saturating_sub(busy.len());
        let mut lines: BTreeMap<&str, Vec<(&Claimant, Instant)>> = BTreeMap::new();
        for (who, w) in &self.waiting {
            lines
                .entry(&who.namespace)
                .or_default()
                .push((who, w.since));
        }
        for line in lines.values_mut() {
            line.sort_by_key(|(who, since)| (*since, (*who).clone()));
            line.reverse();
        }
        let mut used: BTreeMap<&str, usize> = BTreeMap::new();
        for ns in busy {
            *used.entry(ns.as_str()).or_default() += 1;
        }
        let mut granted = Vec::new();
        while free > 0 {
            // Each round: one per namespace still under its cap, oldest heads first.
            let mut round: Vec<(Instant, &str)> = lines
                .iter()
                .filter(|(ns, line)| {
                    !line.is_empty() && used.get(*ns).copied().unwrap_or(0) < limits.per_namespace
                })
                .map(|(ns, line)| (line.last().expect("not empty").1, *ns))
                .collect();
            if round.is_empty() {
                break;
            }
            round.sort();
            for (_, ns) in round {
                if free == 0 {
                    break;
                }
                let (who, _) = lines.get_mut(ns).expect("listed").pop().expect("not empty");
                granted.push(who.clone());
                *used.entry(ns).or_default() += 1;
                free -= 1;
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(ns: &str, name: &str) -> Claimant {
        Claimant {
            namespace: ns.into(),
            kind: Kind::Snapshot,
            name: name.into(),
            node: "n".into(),
        }
    }

    /// The Job a waiter would start.
    fn job(ns: &str, name: &str) -> Busy {
        busy(ns, &format!("job-{name}"))
    }

    fn busy(ns: &str, job: &str) -> Busy {
        Busy {
            namespace: ns.into(),
            job: job.into(),
        }
    }

    const TWO: Limits = Limits {
        total: 2,
        per_namespace: 2,
    };

    #[test]
    fn a_started_job_that_ended_unseen_frees_its_slot_once_the_store_shows_it() {
        let mut slots = Slots::default();
        let t = Instant::now();
        for n in ["s1/n0", "s1/n1"] {
            assert!(slots.request(&who("a", n), &job("a", n), &[], TWO, t));
            slots.started(job("a", n), t);
        }
        // s1/n0's mover ran and ended before any request saw it running: the store shows
        // its Job, finished, and its slot is free at once, not after FORGET_AFTER.
        let later = t + Duration::from_secs(2);
        assert!(!slots.request(&who("a", "s2/n0"), &job("a", "s2/n0"), &[], TWO, later));
        slots.shown(|b| *b == job("a", "s1/n0"));
        assert!(slots.request(&who("a", "s2/n0"), &job("a", "s2/n0"), &[], TWO, later));
    }

    #[test]
    fn the_cap_holds_and_counts_jobs_the_store_does_not_show_yet() {
        let mut slots = Slots::default();
        let t = Instant::now();
        assert!(slots.request(&who("a", "s1/n0"), &job("a", "s1/n0"), &[], TWO, t));
        slots.started(job("a", "s1/n0"), t);
        assert!(slots.request(&who("a", "s1/n1"), &job("a", "s1/n1"), &[], TWO, t));
        slots.started(job("a", "s1/n1"), t);
        // The store shows neither Job yet: both still count.
        assert!(!slots.request(&who("a", "s1/n2"), &job("a", "s1/n2"), &[], TWO, t));
        // The store shows them: counted once, not twice.
        let running = [job("a", "s1/n0"), job("a", "s1/n1")];
        assert!(!slots.request(&who("a", "s1/n2"), &job("a", "s1/n2"), &running, TWO, t));
        assert!(slots.request(
            &who("a", "s1/n2"),
            &job("a", "s1/n2"),
            &running[..1],
            TWO,
            t
        ));
    }

    #[test]
    fn kinds_are_spelled_as_the_resources_are() {
        use kube::Resource;
        for (kind, spelled) in [
            (Kind::Snapshot, crate::api::Snapshot::kind(&())),
            (
                Kind::SnapshotRestore,
                crate::api::SnapshotRestore::kind(&()),
            ),
        ] {
            assert_eq!(kind.name(), spelled);
            assert_eq!(Kind::of(&spelled), Some(kind));
        }
        assert_eq!(Kind::of("Job"), None);
    }

    #[test]
    fn a_slot_given_back_is_free_at_once() {
        let mut slots = Slots::default();
        let t = Instant::now();
        for n in ["s1/n0", "s1/n1"] {
            assert!(slots.request(&who("a", n), &job("a", n), &[], TWO, t));
            slots.started(job("a", n), t);
        }
        assert!(!slots.request(&who("a", "s2/n0"), &job("a", "s2/n0"), &[], TWO, t));
        // s1/n1 failed before its Job was made: its slot goes to the next in line.
        slots.unused(&job("a", "s1/n1"));
        assert!(slots.request(&who("a", "s2/n0"), &job("a", "s2/n0"), &[], TWO, t));
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_waiter_not_the_first_to_ask() {
        let mut slots = Slots::default();
        let t = Instant::now();
        let full = [busy("a", "j1"), busy("a", "j2")];
        assert!(!slots.request(&who("a", "old"), &job("a", "old"), &full, TWO, t));
        assert!(!slots.request(
            &who("a", "new"),
            &job("a", "new"),
            &full,
            TWO,
            t + Duration::from_secs(1)
        ));
        let freed = &full[..1];
        let later = t + Duration::from_secs(2);
        assert_eq!(slots.next(freed, TWO, later), [who("a", "old")]);
        assert!(!slots.request(&who("a", "new"), &job("a", "new"), freed, TWO, later));
        assert!(slots.request(&who("a", "old"), &job("a", "old"), freed, TWO, later));
    }

    #[test]
    fn namespaces_take_turns_and_keep_to_their_cap() {
        let mut slots = Slots::default();
        let t = Instant::now();
        let limits = Limits {
            total: 3,
            per_namespace: 2,
        };
        let full: Vec<Busy> = (0..3).map(|i| busy("x", &format!("j{i}"))).collect();
        for i in 0..5 {
            let at = t + Duration::from_secs(i);
            assert!(!slots.request(
                &who("big", &format!("n{i}")),
                &job("big", &format!("n{i}")),
                &full,
                limits,
                at
            ));
        }
        let late = t + Duration::from_secs(10);
        assert!(!slots.request(
            &who("small", "n0"),
            &job("small", "n0"),
            &full,
            limits,
            late
        ));
        // Three free slots: the big namespace's two oldest, and the small one in turn.
        let order = slots.next(&[], limits, late);
        assert_eq!(
            order,
            [who("big", "n0"), who("small", "n0"), who("big", "n1")]
        );
        // With two of its movers running, the big namespace waits even with slots free.
        let running = [busy("big", "j1"), busy("big", "j2")];
        assert_eq!(slots.next(&running, limits, late), [who("small", "n0")]);
    }

    #[test]
    fn a_waiter_served_already_does_not_hold_the_line() {
        let mut slots = Slots::default();
        let t = Instant::now();
        let limits = Limits {
            total: 1,
            per_namespace: 1,
        };
        assert!(slots.request(&who("a", "s1"), &job("a", "s1"), &[], limits, t));
        slots.started(job("a", "s1"), t);
        // Asked again before the store shows its Job: the same grant, not a place in line.
        assert!(slots.request(&who("a", "s1"), &job("a", "s1"), &[], limits, t));
        assert!(!slots.request(&who("a", "s2"), &job("a", "s2"), &[], limits, t));
        // While s1's Job runs no one is next; once it finished, s2 is.
        assert_eq!(
            slots.next(&[job("a", "s1")], limits, t),
            Vec::<Claimant>::new()
        );
        assert_eq!(slots.next(&[], limits, t), [who("a", "s2")]);
        // A waiter whose resource went is dropped.
        slots.retain(|w| w.name != "s2");
        assert_eq!(slots.next(&[], limits, t), Vec::<Claimant>::new());
    }

    #[test]
    fn waiters_that_stop_asking_are_forgotten() {
        let mut slots = Slots::default();
        let t = Instant::now();
        let full = [busy("a", "j1"), busy("a", "j2")];
        assert!(!slots.request(&who("a", "deleted"), &job("a", "deleted"), &full, TWO, t));
        let later = t + FORGET_AFTER + Duration::from_secs(1);
        assert!(slots.next(&full, TWO, later).is_empty());
        assert!(slots.request(&who("a", "live"), &job("a", "live"), &full[..1], TWO, later));
    }
}
