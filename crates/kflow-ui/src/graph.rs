//! A workflow's graph as SVG: laid out by layout-rs (a Sugiyama layered layout), drawn here.
//!
//! layout-rs places the nodes and routes the edges; a recording backend collects the boxes and
//! curves it would draw (each tagged with our node or edge index through its `properties`),
//! and this module writes the SVG itself, so that every node carries its task's pointer
//! (`data-id`), its kind and line, and classes the page's script and styles colour by state.
//! Text is escaped; nothing in a document reaches the markup unescaped.

use std::collections::HashMap;
use std::fmt::Write;

use kflow_api::definitions::Graph;
use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

/// The most nodes drawn; a bigger graph is refused with a message (the source stays readable).
pub const MAX_NODES: usize = 2_000;

const NODE_H: f64 = 46.0;
const CHAR_W: f64 = 7.4;

/// Extra classes per node id (`done`, `running`, `added`, ...).
pub type Marks = HashMap<String, Vec<&'static str>>;

#[derive(Default)]
struct Recorder {
    boxes: HashMap<usize, (Point, Point)>,
    arrows: HashMap<usize, Vec<(Point, Point)>>,
}

fn index(properties: &Option<String>) -> Option<usize> {
    properties.as_deref()?.strip_prefix("kf")?.parse().ok()
}

impl RenderBackend for Recorder {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _: &StyleAttr,
        p: Option<String>,
        _: Option<ClipHandle>,
    ) {
        if let Some(i) = index(&p) {
            self.boxes.insert(i, (xy, size));
        }
    }
    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}
    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _: bool,
        _: (bool, bool),
        _: &StyleAttr,
        p: Option<String>,
        _: &str,
    ) {
        if let Some(i) = index(&p) {
            self.arrows.insert(i, path.to_vec());
        }
    }
    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

/// One edge drawn: several edges of the graph between the same two nodes become one, with
/// their labels joined (layout-rs takes one edge per pair).
struct Drawn {
    from: usize,
    to: usize,
    labels: Vec<String>,
    /// Drawn from `to` to `from` (a way back, turned so that the graph has no cycle).
    reversed: bool,
}

/// Turns the edges that close a cycle (found by a depth-first walk from the first node) and
/// returns the nodes in a topological order of the result. layout-rs checks reachability by
/// enumerating paths, which is exponential on graphs with many diamonds; fed a graph without
/// cycles, edge by edge in topological order of their sources, every check is immediate.
fn acyclic(n: usize, drawn: &mut [Drawn]) -> Vec<usize> {
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in drawn.iter().enumerate() {
        out[d.from].push(i);
    }
    // 0: unseen, 1: on the stack, 2: done.
    let mut state = vec![0u8; n];
    let mut back = Vec::new();
    for root in 0..n {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some((v, k)) = stack.last_mut() {
            let v = *v;
            if let Some(&e) = out[v].get(*k) {
                *k += 1;
                let w = drawn[e].to;
                match state[w] {
                    0 => {
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => back.push(e),
                    _ => {}
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }
    for e in back {
        let d = &mut drawn[e];
        std::mem::swap(&mut d.from, &mut d.to);
        d.reversed = true;
    }
    // Kahn's algorithm over the turned edges.
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for d in drawn.iter() {
        if d.from != d.to {
            indeg[d.to] += 1;
            succ[d.from].push(d.to);
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..n).filter(|&v| indeg[v] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(v) = ready.pop_front() {
        order.push(v);
        for &w in &succ[v] {
            indeg[w] -= 1;
            if indeg[w] == 0 {
                ready.push_back(w);
            }
        }
    }
    order
}

fn width_of(name: &str, kind: &str) -> f64 {
    let chars = name.chars().count().max(kind.chars().count()).min(40);
    (chars as f64 * CHAR_W + 28.0).max(70.0)
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A class-safe word for a kind (`call http` → `call`).
fn kind_class(kind: &str) -> String {
    kind.split(' ')
        .next()
        .unwrap_or("task")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// The graph as an `<svg>` element. `marks` adds classes to nodes by id.
pub fn svg(g: &Graph, marks: &Marks) -> String {
    if g.nodes.len() > MAX_NODES {
        return format!(
            "<p class=\"note\">This workflow has {} tasks: too many to draw (at most {MAX_NODES}).</p>",
            g.nodes.len()
        );
    }
    let pos: HashMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut drawn: Vec<Drawn> = Vec::new();
    let mut by_pair: HashMap<(usize, usize), usize> = HashMap::new();
    for e in &g.edges {
        let (Some(&a), Some(&b)) = (pos.get(e.from.as_str()), pos.get(e.to.as_str())) else {
            continue;
        };
        // One edge per unordered pair: a loop's way back shares the pair of its way in.
        let key = (a.min(b), a.max(b));
        let at = *by_pair.entry(key).or_insert_with(|| {
            drawn.push(Drawn {
                from: a,
                to: b,
                labels: Vec::new(),
                reversed: false,
            });
            drawn.len() - 1
        });
        if let Some(l) = &e.label
            && !drawn[at].labels.contains(l)
        {
            drawn[at].labels.push(l.clone());
        }
    }
    drawn.retain(|d| d.from != d.to);
    let order = acyclic(g.nodes.len(), &mut drawn);
    let mut rank = vec![usize::MAX; g.nodes.len()];
    for (r, &v) in order.iter().enumerate() {
        rank[v] = r;
    }
    let mut by_source: Vec<usize> = (0..drawn.len()).collect();
    by_source.sort_by_key(|&i| rank[drawn[i].from]);
    let rec = std::panic::catch_unwind(|| {
        let mut vg = VisualGraph::new(Orientation::TopToBottom);
        // Its self-checks walk every path after every edge: far too slow past a few dozen
        // nodes, and the graph given is acyclic by construction.
        vg.dag.set_validate(false);
        let handles: Vec<_> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let size = Point::new(width_of(&n.name, &n.kind), NODE_H);
                let mut look = StyleAttr::simple();
                look.font_size = 12;
                let shape = ShapeKind::new_box(&n.name);
                let e = Element::create_with_properties(
                    shape,
                    look,
                    Orientation::TopToBottom,
                    size,
                    format!("kf{i}"),
                );
                vg.add_node(e)
            })
            .collect();
        for &i in &by_source {
            let d = &drawn[i];
            let mut look = StyleAttr::simple();
            look.font_size = 11;
            let text = short(&d.labels.join(", "), 24);
            let arrow = Arrow::with_properties(
                LineEndKind::None,
                LineEndKind::Arrow,
                LineStyleKind::Normal,
                &text,
                &look,
                format!("kf{i}"),
                &None,
                &None,
            );
            vg.add_edge(arrow, handles[d.from], handles[d.to]);
        }
        let mut rec = Recorder::default();
        vg.do_it(false, false, false, &mut rec);
        rec
    });
    let rec = match rec {
        Ok(r) => r,
        Err(_) => grid(g),
    };
    write_svg(g, &drawn, &rec, marks)
}

/// A plain grid, should the layout fail: every node still shown.
fn grid(g: &Graph) -> Recorder {
    let mut rec = Recorder::default();
    for (i, n) in g.nodes.iter().enumerate() {
        let (col, row) = ((i % 4) as f64, (i / 4) as f64);
        rec.boxes.insert(
            i,
            (
                Point::new(col * 260.0 + 10.0, row * 90.0 + 10.0),
                Point::new(width_of(&n.name, &n.kind), NODE_H),
            ),
        );
    }
    rec
}

fn write_svg(g: &Graph, drawn: &[Drawn], rec: &Recorder, marks: &Marks) -> String {
    let (mut min, mut max) = (
        Point::new(f64::MAX, f64::MAX),
        Point::new(f64::MIN, f64::MIN),
    );
    let mut grow = |p: Point| {
        min = Point::new(min.x.min(p.x), min.y.min(p.y));
        max = Point::new(max.x.max(p.x), max.y.max(p.y));
    };
    for (xy, size) in rec.boxes.values() {
        grow(*xy);
        grow(Point::new(xy.x + size.x, xy.y + size.y));
    }
    for path in rec.arrows.values() {
        for (a, b) in path {
            grow(*a);
            grow(*b);
        }
    }
    if min.x > max.x {
        min = Point::zero();
        max = Point::new(100.0, 100.0);
    }
    let pad = 16.0;
    let (w, h) = (max.x - min.x + 2.0 * pad, max.y - min.y + 2.0 * pad);
    let dx = pad - min.x;
    let dy = pad - min.y;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" role=\"img\" aria-label=\"workflow graph\">\
         <defs><marker id=\"arrowhead\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" class=\"arrowhead\"/></marker></defs>"
    );
    for (i, d) in drawn.iter().enumerate() {
        let Some(path) = rec.arrows.get(&i) else {
            continue;
        };
        if path.len() < 2 {
            continue;
        }
        let p = |pt: &Point| format!("{:.1} {:.1}", pt.x + dx, pt.y + dy);
        let mut d_attr = format!(
            "M {} C {}, {}, {}",
            p(&path[0].0),
            p(&path[0].1),
            p(&path[1].0),
            p(&path[1].1)
        );
        for pt in path.iter().skip(2) {
            let _ = write!(d_attr, " S {}, {}", p(&pt.0), p(&pt.1));
        }
        let (from, to) = (&g.nodes[d.from].id, &g.nodes[d.to].id);
        let label_cls = d.labels.first().map(|l| kind_class(l)).unwrap_or_default();
        let (from, to, head) = if d.reversed {
            (to, from, "marker-start")
        } else {
            (from, to, "marker-end")
        };
        let _ = write!(
            s,
            "<g class=\"edge {}\" data-from=\"{}\" data-to=\"{}\"><path d=\"{d_attr}\" {head}=\"url(#arrowhead)\"/>",
            esc(&label_cls),
            esc(from),
            esc(to)
        );
        if !d.labels.is_empty() {
            // The label sits at the middle point of the route.
            let mid = &path[path.len() / 2].0;
            let _ = write!(
                s,
                "<text class=\"elabel\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                mid.x + dx + 4.0,
                mid.y + dy,
                esc(&short(&d.labels.join(", "), 24))
            );
        }
        s.push_str("</g>");
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let Some((xy, size)) = rec.boxes.get(&i) else {
            continue;
        };
        let (x, y) = (xy.x + dx, xy.y + dy);
        let mut classes = vec!["node".to_string(), format!("k-{}", kind_class(&n.kind))];
        if n.conditional {
            classes.push("conditional".into());
        }
        if let Some(extra) = marks.get(&n.id) {
            classes.extend(extra.iter().map(|c| c.to_string()));
        }
        let line = n
            .line
            .map(|l| format!(" data-line=\"{l}\""))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<g class=\"{}\" data-id=\"{}\"{line} tabindex=\"0\"><title>{} ({}){}</title>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"8\"/>\
             <text class=\"name\" x=\"{:.1}\" y=\"{:.1}\">{}</text>\
             <text class=\"kind\" x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            classes.join(" "),
            esc(&n.id),
            esc(&n.name),
            esc(&n.kind),
            n.line.map(|l| format!(", line {l}")).unwrap_or_default(),
            size.x,
            size.y,
            x + size.x / 2.0,
            y + 19.0,
            esc(&short(&n.name, 40)),
            x + size.x / 2.0,
            y + 35.0,
            esc(&short(&n.kind, 40)),
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kflow_api::definitions::{GraphEdge, GraphNode};

    fn node(id: &str, kind: &str) -> GraphNode {
        GraphNode {
            id: id.into(),
            name: id.trim_start_matches('/').into(),
            path: id.trim_start_matches('/').into(),
            kind: kind.into(),
            parent: None,
            line: Some(3),
            conditional: false,
        }
    }

    fn edge(a: &str, b: &str, label: Option<&str>) -> GraphEdge {
        GraphEdge {
            from: a.into(),
            to: b.into(),
            label: label.map(str::to_string),
        }
    }

    #[test]
    fn nodes_carry_their_ids_and_text_is_escaped() {
        let g = Graph {
            nodes: vec![
                node("start", "start"),
                node("/do/0/<script>alert(1)</script>", "set"),
                node("end", "end"),
            ],
            edges: vec![
                edge("start", "/do/0/<script>alert(1)</script>", None),
                edge("/do/0/<script>alert(1)</script>", "end", Some("a&b")),
            ],
        };
        let mut marks = Marks::new();
        marks.insert("end".into(), vec!["done"]);
        let s = svg(&g, &marks);
        assert!(!s.contains("<script>"), "{s}");
        assert!(s.contains("data-id=\"/do/0/&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(s.contains("class=\"node k-end done\""));
        assert!(s.contains("a&amp;b"));
        assert_eq!(s.matches("=\"url(#arrowhead)\"").count(), 2, "{s}");
    }

    #[test]
    fn loops_and_parallel_edges_lay_out_without_failing() {
        // A loop (for → body → for), a switch with two cases to one target, a diamond.
        let mut nodes = vec![node("start", "start"), node("end", "end")];
        let mut edges = vec![edge("start", "/a", None)];
        for n in ["/a", "/b", "/c", "/d", "/e"] {
            nodes.push(node(n, "set"));
        }
        edges.extend([
            edge("/a", "/b", Some("each")),
            edge("/b", "/a", None),
            edge("/a", "/c", Some("done")),
            edge("/c", "/d", Some("x")),
            edge("/c", "/d", Some("y")),
            edge("/c", "/e", None),
            edge("/d", "end", None),
            edge("/e", "end", None),
        ]);
        let s = svg(&Graph { nodes, edges }, &Marks::new());
        assert_eq!(s.matches("class=\"node ").count(), 7);
        assert!(s.contains("x, y"), "labels of parallel edges are joined");
    }

    #[test]
    fn two_hundred_tasks_are_drawn() {
        let mut nodes = vec![node("start", "start"), node("end", "end")];
        let mut edges = Vec::new();
        let mut prev = "start".to_string();
        for i in 0..200 {
            let id = format!("/do/{i}/t{i}");
            nodes.push(node(&id, "call http"));
            edges.push(edge(&prev, &id, None));
            if i % 10 == 0 && i > 0 {
                edges.push(edge(
                    &format!("/do/{}/t{}", i - 5, i - 5),
                    &id,
                    Some("needs"),
                ));
            }
            prev = id;
        }
        edges.push(edge(&prev, "end", None));
        let s = svg(&Graph { nodes, edges }, &Marks::new());
        assert_eq!(s.matches("class=\"node ").count(), 202);
    }

    #[test]
    fn a_dense_dag_of_300_tasks_is_drawn() {
        // Each task needs the two before it: about 2^150 paths from the first to the last.
        let mut nodes = vec![node("start", "start"), node("end", "end")];
        let mut edges = vec![edge("start", "/t0", None)];
        for i in 0..300 {
            nodes.push(node(&format!("/t{i}"), "set"));
            for back in [1, 2] {
                if i >= back {
                    edges.push(edge(
                        &format!("/t{}", i - back),
                        &format!("/t{i}"),
                        Some("needs"),
                    ));
                }
            }
        }
        edges.push(edge("/t299", "end", None));
        let s = svg(&Graph { nodes, edges }, &Marks::new());
        assert_eq!(s.matches("class=\"node ").count(), 302);
        assert_eq!(s.matches("=\"url(#arrowhead)\"").count(), 599);
    }
}
