//! The sandbox's pictures (issue 10 §7): the topology at the end (laid out by `layout-rs`,
//! a Graphviz-style layout), and each node's connection count over time with its bounds
//! (drawn by `plotters`). Both SVG.

use layout::backends::svg::SVGWriter;
use layout::gv::{DotParser, GraphBuilder};
use plotters::prelude::*;
use std::fmt::Write as _;

/// One node at the end of a run.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Its label (node number).
    pub label: String,
    /// Nodes it dialled (indices into the list), i.e. its outgoing connections.
    pub dialled: Vec<usize>,
    /// Its connection count.
    pub connections: usize,
}

/// The fill colour of a node with `n` connections and bounds `[min, max]`: red below,
/// green within, orange above.
fn colour(n: usize, min: usize, max: usize) -> &'static str {
    if n < min {
        "#e06666"
    } else if n > max {
        "#f6b26b"
    } else {
        "#93c47d"
    }
}

/// The topology as SVG: a node per peer coloured by its connection count, an arrow per
/// connection from the node that dialled to the one that accepted.
///
/// Errors: the layout library refused the graph (its message).
pub fn topology_svg(nodes: &[NodeView], min: usize, max: usize) -> Result<String, String> {
    let mut dot = String::from("digraph sandbox {\n");
    for (i, n) in nodes.iter().enumerate() {
        let _ = writeln!(
            dot,
            "  n{i} [label=\"{} ({})\", shape=circle, style=filled, fillcolor=\"{}\"];",
            n.label,
            n.connections,
            colour(n.connections, min, max)
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        for j in &n.dialled {
            let _ = writeln!(dot, "  n{i} -> n{j};");
        }
    }
    dot.push_str("}\n");
    let mut parser = DotParser::new(&dot);
    let graph = parser.process()?;
    let mut builder = GraphBuilder::new();
    builder.visit_graph(&graph);
    let mut visual = builder.get();
    let mut svg = SVGWriter::new();
    visual.do_it(false, false, false, &mut svg);
    Ok(svg.finalize())
}

/// Each node's connection count over time (`samples`: seconds since start, then one count
/// per node), with the bounds drawn as dashed lines.
///
/// Errors: the plotting library's.
pub fn connections_svg(
    samples: &[(f64, Vec<usize>)],
    min: usize,
    max: usize,
) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let end = samples.last().map_or(1.0, |s| s.0).max(1.0);
        let top = samples
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .chain([max])
            .max()
            .unwrap_or(max)
            + 2;
        let mut chart = ChartBuilder::on(&root)
            .caption("connections per node", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..end, 0usize..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("connections")
            .draw()
            .map_err(|e| e.to_string())?;
        let nodes = samples.first().map_or(0, |s| s.1.len());
        for i in 0..nodes {
            let colour = Palette99::pick(i);
            chart
                .draw_series(LineSeries::new(
                    samples
                        .iter()
                        .map(|(t, c)| (*t, c.get(i).copied().unwrap_or(0))),
                    &colour,
                ))
                .map_err(|e| e.to_string())?;
        }
        for bound in [min, max] {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, bound), (end, bound)],
                    6,
                    4,
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // in tests a panic is the failure report
    use super::*;

    #[test]
    fn both_pictures_are_svg_with_a_node_and_a_line_per_node() {
        let nodes: Vec<NodeView> = (0..4)
            .map(|i| NodeView {
                label: format!("{}", i + 1),
                dialled: vec![(i + 1) % 4],
                connections: 2,
            })
            .collect();
        let topo = topology_svg(&nodes, 1, 3).unwrap();
        let doc = roxmltree::Document::parse(&topo).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert!(topo.contains("3 (2)"), "labels with counts");
        let samples: Vec<(f64, Vec<usize>)> = (0..5)
            .map(|t| (f64::from(t), vec![t as usize, 2, 3, 1]))
            .collect();
        let chart = connections_svg(&samples, 1, 3).unwrap();
        let doc = roxmltree::Document::parse(&chart).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let lines = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "polyline")
            .count();
        assert!(lines >= 4, "a line per node: {lines}");
    }
}
