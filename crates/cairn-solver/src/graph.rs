//! Vertices, edges and the deduplicated graph a solve runs over.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cairn_oci::Digest;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::key::{vertex_digest, CacheDescription};
use crate::op::Op;

/// A vertex as progress and errors name it: its human name and its digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VertexId {
    name: Arc<str>,
    digest: Digest,
}

impl VertexId {
    /// An id from its parts (the solver makes them; ops under test may need one).
    pub fn new(name: impl Into<Arc<str>>, digest: Digest) -> Self {
        VertexId {
            name: name.into(),
            digest,
        }
    }

    /// The human name, as given in [`VertexOptions`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vertex digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl fmt::Display for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self.name, self.digest.short())
    }
}

impl fmt::Debug for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a vertex carries besides its op and inputs. None of it is part of the digest.
#[derive(Clone, Debug, Default)]
pub struct VertexOptions {
    name: String,
    ignore_cache: bool,
}

impl VertexOptions {
    /// Options with the human name shown in progress and errors (`"RUN make"`).
    pub fn new(name: impl Into<String>) -> Self {
        VertexOptions {
            name: name.into(),
            ignore_cache: false,
        }
    }

    /// Run the op even on a cache hit (its fresh result is still saved). Only this vertex: its
    /// dependents still hit the cache if the new result leaves their keys unchanged.
    pub fn ignore_cache(mut self, yes: bool) -> Self {
        self.ignore_cache = yes;
        self
    }
}

/// One step of a pipeline: an op, the edges it reads and its options. Cheap to clone.
///
/// Vertices are immutable and built inputs first, so a vertex can only point at vertices that
/// existed before it: a graph of them cannot have a cycle, and the solver never checks for one.
pub struct Vertex<R> {
    inner: Arc<VertexInner<R>>,
}

struct VertexInner<R> {
    id: VertexId,
    op: Arc<dyn Op<R>>,
    description: CacheDescription,
    inputs: Vec<Edge<R>>,
    outputs: usize,
    ignore_cache: bool,
}

/// One output of a vertex, as another vertex's input or as a solve target.
pub struct Edge<R> {
    vertex: Vertex<R>,
    output: usize,
}

impl<R> Vertex<R> {
    /// A vertex running `op` over `inputs`. Calls [`Op::describe`] once, to compute the digest.
    pub fn new(op: Arc<dyn Op<R>>, inputs: Vec<Edge<R>>, options: VertexOptions) -> Self {
        let description = op.describe();
        let digest = vertex_digest(
            &description,
            inputs.iter().map(|e| (e.vertex.digest(), e.output)),
        );
        Vertex {
            inner: Arc::new(VertexInner {
                id: VertexId::new(options.name, digest),
                outputs: op.outputs().max(1),
                op,
                description,
                inputs,
                ignore_cache: options.ignore_cache,
            }),
        }
    }

    /// The name and digest.
    pub fn id(&self) -> &VertexId {
        &self.inner.id
    }

    /// The digest: the op's description and the inputs' digests.
    pub fn digest(&self) -> &Digest {
        &self.inner.id.digest
    }

    /// The op.
    pub fn op(&self) -> &Arc<dyn Op<R>> {
        &self.inner.op
    }

    /// The op's description, as computed when the vertex was made.
    pub fn description(&self) -> &CacheDescription {
        &self.inner.description
    }

    /// The inputs, in the order the op receives them.
    pub fn inputs(&self) -> &[Edge<R>] {
        &self.inner.inputs
    }

    /// How many outputs the op produces (at least one).
    pub fn outputs(&self) -> usize {
        self.inner.outputs
    }

    /// The edge to output `index`, if the op has that many outputs.
    pub fn output(&self, index: usize) -> Option<Edge<R>> {
        (index < self.inner.outputs).then(|| Edge {
            vertex: self.clone(),
            output: index,
        })
    }

    /// The edge to the first output.
    pub fn edge(&self) -> Edge<R> {
        Edge {
            vertex: self.clone(),
            output: 0,
        }
    }
}

impl<R> Edge<R> {
    /// The vertex this edge reads.
    pub fn vertex(&self) -> &Vertex<R> {
        &self.vertex
    }

    /// Which of its outputs.
    pub fn output(&self) -> usize {
        self.output
    }
}

impl<R> Clone for Vertex<R> {
    fn clone(&self) -> Self {
        Vertex {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R> Clone for Edge<R> {
    fn clone(&self) -> Self {
        Edge {
            vertex: self.vertex.clone(),
            output: self.output,
        }
    }
}

impl<R> fmt::Debug for Vertex<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vertex")
            .field("id", &self.inner.id)
            .field("inputs", &self.inner.inputs)
            .finish()
    }
}

impl<R> fmt::Debug for Edge<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.vertex.id(), self.output)
    }
}

pub(crate) struct Node<R> {
    pub(crate) vertex: Vertex<R>,
    pub(crate) ignore_cache: bool,
}

/// The vertices needed for some targets, one node per digest, in a petgraph `DiGraph` whose
/// edges run from an input to the vertex reading it.
///
/// Vertices built separately but identical (same digest) become one node; their options merge
/// (the first name wins, `ignore_cache` if any asks). Nodes are added inputs first, so node
/// order is a topological order.
pub struct Graph<R> {
    graph: DiGraph<Node<R>, (usize, usize)>,
    index: HashMap<Digest, NodeIndex>,
    targets: Vec<(usize, usize)>,
}

impl<R> Graph<R> {
    /// The graph of `targets` and everything they depend on.
    pub fn from_targets<'a>(targets: impl IntoIterator<Item = &'a Edge<R>>) -> Self
    where
        R: 'a,
    {
        let mut g = Graph {
            graph: DiGraph::new(),
            index: HashMap::new(),
            targets: Vec::new(),
        };
        for target in targets {
            let node = g.add(&target.vertex);
            g.targets.push((node.index(), target.output));
        }
        g
    }

    /// Adds `root` and its ancestors, depth first without recursion (pipelines can be deep).
    fn add(&mut self, root: &Vertex<R>) -> NodeIndex {
        let mut stack = vec![(root.clone(), 0)];
        while let Some((vertex, next)) = stack.last_mut() {
            if let Some(&found) = self.index.get(vertex.digest()) {
                self.graph[found].ignore_cache |= vertex.inner.ignore_cache;
                stack.pop();
                continue;
            }
            if let Some(input) = vertex.inputs().get(*next) {
                *next += 1;
                let input = input.vertex.clone();
                stack.push((input, 0));
                continue;
            }
            // All inputs are in the graph now.
            let node = self.graph.add_node(Node {
                vertex: vertex.clone(),
                ignore_cache: vertex.inner.ignore_cache,
            });
            for (position, input) in vertex.inputs().iter().enumerate() {
                if let Some(&from) = self.index.get(input.vertex.digest()) {
                    self.graph.add_edge(from, node, (position, input.output));
                }
            }
            self.index.insert(vertex.digest().clone(), node);
            stack.pop();
        }
        self.index[root.digest()]
    }

    /// How many distinct vertices.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether there are no vertices.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Whether a vertex with this digest is in the graph.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.index.contains_key(digest)
    }

    /// The vertices, inputs before the vertices that read them.
    pub fn vertices(&self) -> impl Iterator<Item = &Vertex<R>> {
        self.graph.node_weights().map(|n| &n.vertex)
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = &Node<R>> {
        self.graph.node_weights()
    }

    pub(crate) fn node(&self, i: usize) -> &Node<R> {
        &self.graph[NodeIndex::new(i)]
    }

    /// The (node, output) pairs node `i` reads, in input order.
    pub(crate) fn inputs(&self, i: usize) -> Vec<(usize, usize)> {
        let mut inputs: Vec<_> = self
            .graph
            .edges_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|e| {
                use petgraph::visit::EdgeRef;
                let (position, output) = *e.weight();
                (position, e.source().index(), output)
            })
            .collect();
        inputs.sort_unstable();
        inputs.into_iter().map(|(_, n, o)| (n, o)).collect()
    }

    /// The (node, output) pair of each target, in the order given.
    pub(crate) fn targets(&self) -> &[(usize, usize)] {
        &self.targets
    }
}
