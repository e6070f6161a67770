//! The tree of spread-preference values for one service: level `i` groups members by the value
//! of preference `i`, leaves are members. Each internal node keeps a heap of its children, so
//! placing or removing one replica costs O(depth · log(children)).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

const NO_PARENT: usize = usize::MAX;

#[derive(Debug, Default)]
struct Node {
    parent: usize,
    children: Vec<usize>,
    /// Position among its siblings (value order; members in name order).
    ordinal: u32,
    /// The member index, for leaves.
    member: Option<usize>,
    /// Replicas of the service in this subtree.
    count: u32,
    /// How many more replicas this subtree can take (placement only).
    remaining: u64,
    /// Children with `remaining > 0`, least loaded on top (placement only).
    heap: BinaryHeap<Reverse<(u32, u64, u32, usize)>>,
}

/// The value of one spread preference on a member: `None` when it lacks the label. Groups are
/// ordered by value, the group of members without the label last.
pub(crate) type GroupValue<'a> = Option<&'a str>;

#[derive(Debug)]
pub(crate) struct Tree {
    nodes: Vec<Node>,
    /// Leaf node of each member index (`None` for members not in the tree).
    leaf: Vec<Option<usize>>,
    /// Scratch space for the walk from the root to a leaf.
    path: Vec<usize>,
}

#[derive(Default)]
struct Build<'a> {
    groups: BTreeMap<(bool, &'a str), Build<'a>>,
    members: Vec<usize>,
}

impl Tree {
    /// `entries`: (member index, its value for each preference), in member name order.
    pub(crate) fn build<'a>(
        member_count: usize,
        entries: impl IntoIterator<Item = (usize, Vec<GroupValue<'a>>)>,
    ) -> Tree {
        let mut root = Build::default();
        for (member, path) in entries {
            let mut b = &mut root;
            for v in path {
                let key = match v {
                    Some(s) => (false, s),
                    None => (true, ""),
                };
                b = b.groups.entry(key).or_default();
            }
            b.members.push(member);
        }
        let mut tree = Tree {
            nodes: Vec::new(),
            leaf: vec![None; member_count],
            path: Vec::new(),
        };
        tree.flatten(root, NO_PARENT, 0);
        tree
    }

    fn flatten(&mut self, b: Build<'_>, parent: usize, ordinal: u32) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            parent,
            ordinal,
            ..Node::default()
        });
        let mut children = Vec::new();
        if b.groups.is_empty() {
            for (i, m) in b.members.into_iter().enumerate() {
                let leaf = self.nodes.len();
                self.nodes.push(Node {
                    parent: id,
                    ordinal: i as u32,
                    member: Some(m),
                    ..Node::default()
                });
                self.leaf[m] = Some(leaf);
                children.push(leaf);
            }
        } else {
            for (i, (_, g)) in b.groups.into_iter().enumerate() {
                children.push(self.flatten(g, id, i as u32));
            }
        }
        self.nodes[id].children = children;
        id
    }

    pub(crate) fn contains(&self, member: usize) -> bool {
        self.leaf.get(member).copied().flatten().is_some()
    }

    /// Replicas of the service currently on the member.
    pub(crate) fn count_on(&self, member: usize) -> u32 {
        match self.leaf.get(member).copied().flatten() {
            Some(l) => self.nodes[l].count,
            None => 0,
        }
    }

    pub(crate) fn total(&self) -> u32 {
        self.nodes.first().map_or(0, |n| n.count)
    }

    /// Records an existing replica on a member of the tree.
    pub(crate) fn add_existing(&mut self, member: usize) {
        let Some(leaf) = self.leaf.get(member).copied().flatten() else {
            return;
        };
        let mut n = leaf;
        while n != NO_PARENT {
            self.nodes[n].count += 1;
            n = self.nodes[n].parent;
        }
    }

    /// Removes `k` of the existing replicas `kept` (slot, member): at every level from the
    /// child with the most replicas (ties: the one holding the highest slot), on the member its
    /// highest slot. Returns (member, slot) pairs.
    pub(crate) fn scale_down(
        &mut self,
        k: u32,
        kept: impl IntoIterator<Item = (u32, usize)>,
    ) -> Vec<(usize, u32)> {
        let mut removed = Vec::new();
        if k == 0 || self.nodes.is_empty() {
            return removed;
        }
        // Slots in every subtree, so ties can go to the highest slot.
        let mut sets: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); self.nodes.len()];
        for (slot, member) in kept {
            let mut n = match self.leaf.get(member).copied().flatten() {
                Some(l) => l,
                None => continue,
            };
            while n != NO_PARENT {
                sets[n].insert(slot);
                n = self.nodes[n].parent;
            }
        }
        let key = |sets: &[BTreeSet<u32>], c: usize| {
            (
                sets[c].len(),
                sets[c].last().copied().unwrap_or(0),
                Reverse(c),
            )
        };
        let mut heaps: Vec<BinaryHeap<(usize, u32, Reverse<usize>)>> =
            (0..self.nodes.len()).map(|_| BinaryHeap::new()).collect();
        for (id, node) in self.nodes.iter().enumerate() {
            for &c in &node.children {
                if !sets[c].is_empty() {
                    heaps[id].push(key(&sets, c));
                }
            }
        }
        for _ in 0..k {
            let mut path = vec![0usize];
            let mut n = 0usize;
            while self.nodes[n].member.is_none() {
                let Some((_, _, Reverse(c))) = heaps[n].pop() else {
                    return removed;
                };
                path.push(c);
                n = c;
            }
            let Some(slot) = sets[n].last().copied() else {
                return removed;
            };
            for &p in &path {
                sets[p].remove(&slot);
                self.nodes[p].count -= 1;
            }
            for w in path.windows(2).rev() {
                let (parent, child) = (w[0], w[1]);
                if !sets[child].is_empty() {
                    heaps[parent].push(key(&sets, child));
                }
            }
            if let Some(m) = self.nodes[n].member {
                removed.push((m, slot));
            }
        }
        removed
    }

    /// Gets ready to place replicas: `capacity[member]` is how many more each member can take.
    pub(crate) fn prepare(&mut self, capacity: impl Fn(usize) -> u64, instances: &[u64]) {
        for id in (0..self.nodes.len()).rev() {
            let remaining = match self.nodes[id].member {
                Some(m) => capacity(m),
                None => {
                    let mut heap = BinaryHeap::with_capacity(self.nodes[id].children.len());
                    let mut sum = 0u64;
                    for &c in &self.nodes[id].children {
                        let r = self.nodes[c].remaining;
                        if r > 0 {
                            sum = sum.saturating_add(r);
                            heap.push(Reverse(self.key(c, instances)));
                        }
                    }
                    self.nodes[id].heap = heap;
                    sum
                }
            };
            self.nodes[id].remaining = remaining;
        }
    }

    fn key(&self, c: usize, instances: &[u64]) -> (u32, u64, u32, usize) {
        let n = &self.nodes[c];
        let inst = n
            .member
            .map_or(0, |m| instances.get(m).copied().unwrap_or(0));
        (n.count, inst, n.ordinal, c)
    }

    /// Places one replica: at every level the child with the fewest replicas of the service
    /// (members: then fewest instances in total, then name order). Returns the member, or
    /// `None` when no member can take one. The caller updates `instances` for the member
    /// before the next call; this function reads it when it re-inserts the member.
    pub(crate) fn place_one(&mut self, instances: &mut [u64]) -> Option<usize> {
        if self.nodes.first().is_none_or(|r| r.remaining == 0) {
            return None;
        }
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        path.push(0);
        let mut n = 0usize;
        while self.nodes[n].member.is_none() {
            let Reverse((_, _, _, c)) = self.nodes[n].heap.pop()?;
            path.push(c);
            n = c;
        }
        let member = self.nodes[n].member?;
        if let Some(i) = instances.get_mut(member) {
            *i += 1;
        }
        for &p in &path {
            self.nodes[p].count += 1;
            self.nodes[p].remaining -= 1;
        }
        for w in path.windows(2).rev() {
            let (parent, child) = (w[0], w[1]);
            if self.nodes[child].remaining > 0 {
                let k = self.key(child, instances);
                self.nodes[parent].heap.push(Reverse(k));
            }
        }
        self.path = path;
        Some(member)
    }
}
