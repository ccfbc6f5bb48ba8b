//! Partition shapes (pure): which directed pairs of nodes are cut, drawn
//! from a seeded generator and the cluster size. A cut `(a, b)` drops
//! a's packets to b (a blackhole route to b inside a's namespace, see
//! `net.rs`); a two-way cut is both pairs. The harness's own API traffic
//! (from the bridge address) is never part of a shape.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value as Json};

/// The shapes the partition nemeses draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One node cut from every other, both ways.
    Isolate,
    /// A minority side and a majority side, cut both ways.
    Split,
    /// Two halves that do not see each other and one node that sees both.
    Bridge,
    /// One node's packets to one other are dropped; the reverse passes.
    OneWay,
}

/// One partition: the directed cuts and the sides (for the history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub shape: Shape,
    /// `(from, to)`: `from`'s packets to `to` are dropped.
    pub cuts: BTreeSet<(usize, usize)>,
    /// Isolate and split: `[minority, majority]`; bridge: `[half, half]`
    /// with the bridge node in neither; one-way: `[[from], [to]]`.
    pub sides: Vec<Vec<usize>>,
    /// The bridge node (bridge shape only).
    pub bridge: Option<usize>,
}

fn both_ways(a: &[usize], b: &[usize]) -> BTreeSet<(usize, usize)> {
    let mut cuts = BTreeSet::new();
    for &x in a {
        for &y in b {
            cuts.insert((x, y));
            cuts.insert((y, x));
        }
    }
    cuts
}

/// The largest minority of `n` nodes.
pub fn minority(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

impl Partition {
    /// Draws a partition of `shape` over `n` nodes (`n >= 3`).
    pub fn draw<R: Rng>(shape: Shape, n: usize, rng: &mut R) -> Partition {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let (sides, bridge, cuts) = match shape {
            Shape::Isolate => {
                let (one, rest) = order.split_at(1);
                let cuts = both_ways(one, rest);
                (vec![one.to_vec(), rest.to_vec()], None, cuts)
            }
            Shape::Split => {
                let (small, big) = order.split_at(minority(n).max(1));
                let cuts = both_ways(small, big);
                (vec![small.to_vec(), big.to_vec()], None, cuts)
            }
            Shape::Bridge => {
                let b = order[0];
                let rest = &order[1..];
                let (h1, h2) = rest.split_at(rest.len() / 2);
                let cuts = both_ways(h1, h2);
                (vec![h1.to_vec(), h2.to_vec()], Some(b), cuts)
            }
            Shape::OneWay => {
                let (a, b) = (order[0], order[1]);
                (vec![vec![a], vec![b]], None, BTreeSet::from([(a, b)]))
            }
        };
        let mut sides = sides;
        for s in &mut sides {
            s.sort_unstable();
        }
        Partition {
            shape,
            cuts,
            sides,
            bridge,
        }
    }

    /// The nodes the partition acts on (for "faults on different nodes"):
    /// the cut-off side of isolate/split, the bridge node, both ends of a
    /// one-way cut.
    pub fn footprint(&self) -> BTreeSet<usize> {
        match self.shape {
            Shape::Isolate | Shape::Split => self.sides[0].iter().copied().collect(),
            Shape::Bridge => self.bridge.into_iter().collect(),
            Shape::OneWay => self.sides.iter().flatten().copied().collect(),
        }
    }

    /// The nodes counted as lost to the rest while it holds: the cut-off
    /// side; for a bridge the smaller half (neither half has a majority
    /// without the bridge node); for one-way the sender.
    pub fn lost(&self) -> BTreeSet<usize> {
        match self.shape {
            Shape::Isolate | Shape::Split | Shape::OneWay => {
                self.sides[0].iter().copied().collect()
            }
            Shape::Bridge => {
                let (a, b) = (&self.sides[0], &self.sides[1]);
                let small = if a.len() <= b.len() { a } else { b };
                small.iter().copied().collect()
            }
        }
    }

    /// Whether `from`'s packets reach `to`.
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        !self.cuts.contains(&(from, to))
    }

    /// The history's parameters, with node names.
    pub fn params(&self, name: &dyn Fn(usize) -> String) -> Json {
        let names = |v: &[usize]| v.iter().map(|&i| name(i)).collect::<Vec<_>>();
        let sides: Vec<Vec<String>> = self.sides.iter().map(|s| names(s)).collect();
        let cuts: Vec<[String; 2]> = self.cuts.iter().map(|&(a, b)| [name(a), name(b)]).collect();
        let mut v = json!({ "sides": sides, "cuts": cuts });
        if let Some(b) = self.bridge {
            v["bridge"] = json!(name(b));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const SHAPES: [Shape; 4] = [Shape::Isolate, Shape::Split, Shape::Bridge, Shape::OneWay];

    fn all(seeds: u64, n: usize, shape: Shape) -> Vec<Partition> {
        (0..seeds)
            .map(|s| Partition::draw(shape, n, &mut StdRng::seed_from_u64(s)))
            .collect()
    }

    #[test]
    fn same_seed_same_partition() {
        for shape in SHAPES {
            let a = Partition::draw(shape, 5, &mut StdRng::seed_from_u64(9));
            let b = Partition::draw(shape, 5, &mut StdRng::seed_from_u64(9));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn isolate_cuts_one_node_from_all_others_both_ways() {
        for n in 3..8 {
            for p in all(50, n, Shape::Isolate) {
                let x = p.sides[0][0];
                assert_eq!(p.cuts.len(), 2 * (n - 1));
                for j in (0..n).filter(|&j| j != x) {
                    assert!(!p.reaches(x, j) && !p.reaches(j, x));
                    for k in (0..n).filter(|&k| k != x && k != j) {
                        assert!(p.reaches(j, k));
                    }
                }
            }
        }
    }

    #[test]
    fn split_majority_side_has_more_than_half_and_sides_do_not_meet() {
        for n in 3..9 {
            for p in all(50, n, Shape::Split) {
                let (small, big) = (&p.sides[0], &p.sides[1]);
                assert!(big.len() * 2 > n, "majority {big:?} of {n}");
                assert!(!small.is_empty());
                assert_eq!(small.len() + big.len(), n);
                for &a in small {
                    for &b in big {
                        assert!(!p.reaches(a, b) && !p.reaches(b, a));
                    }
                }
                for side in [small, big] {
                    for &a in side {
                        for &b in side {
                            assert!(p.reaches(a, b));
                        }
                    }
                }
                assert_eq!(p.lost().len(), small.len());
            }
        }
    }

    #[test]
    fn the_bridge_node_reaches_everyone_and_the_halves_do_not_meet() {
        for n in 3..9 {
            for p in all(50, n, Shape::Bridge) {
                let b = p.bridge.unwrap();
                for j in (0..n).filter(|&j| j != b) {
                    assert!(p.reaches(b, j) && p.reaches(j, b));
                }
                let (h1, h2) = (&p.sides[0], &p.sides[1]);
                assert!(!h1.is_empty() && !h2.is_empty());
                assert_eq!(h1.len() + h2.len() + 1, n);
                assert!(!h1.contains(&b) && !h2.contains(&b));
                for &x in h1 {
                    for &y in h2 {
                        assert!(!p.reaches(x, y) && !p.reaches(y, x));
                    }
                }
                // Each half plus the bridge node is a majority for n odd.
                if n % 2 == 1 {
                    assert!((h1.len().max(h2.len()) + 1) * 2 > n);
                }
            }
        }
    }

    #[test]
    fn one_way_cuts_exactly_one_direction() {
        for p in all(100, 5, Shape::OneWay) {
            assert_eq!(p.cuts.len(), 1);
            let (a, b) = *p.cuts.iter().next().unwrap();
            assert_ne!(a, b);
            assert!(!p.reaches(a, b));
            assert!(p.reaches(b, a));
            assert_eq!(p.footprint(), BTreeSet::from([a, b]));
            assert_eq!(p.lost(), BTreeSet::from([a]));
        }
    }

    #[test]
    fn lost_sides_are_minorities() {
        for n in 3..9 {
            for shape in SHAPES {
                for p in all(30, n, shape) {
                    assert!(p.lost().len() <= minority(n), "{shape:?} {n}");
                }
            }
        }
    }

    #[test]
    fn params_name_the_sides_and_the_bridge() {
        let p = Partition::draw(Shape::Bridge, 5, &mut StdRng::seed_from_u64(1));
        let v = p.params(&|i| format!("c{}", i + 1));
        assert_eq!(v["sides"].as_array().unwrap().len(), 2);
        assert!(v["bridge"].as_str().unwrap().starts_with('c'));
        assert_eq!(v["cuts"].as_array().unwrap().len(), p.cuts.len());
    }
}
