/// \file
/// \brief Graphviz DOT export of a computational graph.
///
/// Nodes are `n<i>`, labelled "<i>: <primitive>", the node name and, when known, the shape;
/// they are filled with a colour per primitive. Data-flow edges are solid; virtual edges (only
/// with `dot_options::virtual_edges`) are dashed grey and labelled with their distance.
#pragma once
#include <sstream>
#include <string>

#include "ghnq/graph/graph.hpp"

namespace ghnq::graph {

/// What `to_dot` writes.
struct dot_options {
  bool virtual_edges = false;  ///< also write edges with dist > 1 (dashed, labelled)
  bool names = true;           ///< add the node name to the label
  bool shapes = true;          ///< add the node shape (when not empty) to the label
  std::string graph_name = "ghn_graph";
};

namespace detail {

/// DOT-escaped string contents (quotes and backslashes).
inline std::string dot_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

inline const char* dot_color(primitive p) {
  switch (p) {
    case primitive::conv: return "#9ecae1";
    case primitive::sep_conv: return "#6baed6";
    case primitive::dil_conv: return "#4292c6";
    case primitive::bias: return "#f768a1";
    case primitive::bn: return "#fdd0a2";
    case primitive::ln: return "#ffff99";
    case primitive::max_pool: return "#a1d99b";
    case primitive::avg_pool: return "#74c476";
    case primitive::glob_avg: return "#31a354";
    case primitive::sum: return "#dadaeb";
    case primitive::concat: return "#bcbddc";
    case primitive::cse: return "#fc9272";
    case primitive::msa: return "#969696";
    case primitive::pos_enc: return "#d9d9d9";
    case primitive::input: return "#ffffff";
  }
  return "#ffffff";
}

}  // namespace detail

/// The graph in Graphviz DOT syntax (render with `dot -Tpdf`).
/// \code std::ofstream("g.dot") << ghnq::graph::to_dot(ghnq::graph::build(net)); \endcode
inline std::string to_dot(const computational_graph& g, const dot_options& opt = {}) {
  std::ostringstream os;
  os << "digraph \"" << detail::dot_escape(opt.graph_name) << "\" {\n";
  os << "  node [shape=box, style=filled, fontname=\"Helvetica\", fontsize=10];\n";
  for (int i = 0; i < g.n_nodes(); ++i) {
    const node& n = g.nodes[static_cast<std::size_t>(i)];
    std::string label = std::to_string(i) + ": " + to_string(n.type);
    if (opt.names && !n.name.empty()) label += "\n" + n.name;
    if (opt.shapes && !n.shape.empty()) label += "\n" + n.shape.to_string();
    os << "  n" << i << " [label=\"" << detail::dot_escape(label) << "\", fillcolor=\"" << detail::dot_color(n.type)
       << "\"];\n";
  }
  for (const edge& e : g.edges) {
    if (e.dist == 1) {
      os << "  n" << e.src << " -> n" << e.dst << ";\n";
    } else if (opt.virtual_edges) {
      os << "  n" << e.src << " -> n" << e.dst << " [style=dashed, color=gray, label=\"" << e.dist << "\"];\n";
    }
  }
  os << "}\n";
  return os.str();
}

}  // namespace ghnq::graph
