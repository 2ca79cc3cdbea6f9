// Offsets for buffers whose lifetimes are known in advance: one arena instead of one allocation per
// tensor, so that memory dead after forward (a later stage's activations, once backward has passed
// it) holds backward's gradients and rebuilt activations, and forward's temporaries live where later
// activations have not been written yet.

/// Lifetimes are in steps of a simulated schedule: a buffer is live from its first use to its last
/// (both inclusive); two buffers whose lifetimes intersect never share memory.
public struct ArenaPlan {
    public struct Item {
        public var floats: Int
        public var first: Int, last: Int
        public var offset = 0
    }
    public private(set) var items: [Item] = []
    /// The schedule's current step.
    public private(set) var now = 0

    /// A new buffer of `floats` (rounded up to 64 bytes), live from now.
    public mutating func add(_ floats: Int) -> Int {
        items.append(Item(floats: (max(floats, 16) + 15) & ~15, first: now, last: now))
        return items.count - 1
    }

    /// Marks the buffers used by the current step and moves to the next.
    public mutating func step(_ ids: Int?...) { step(ids.compactMap { $0 }) }

    /// Marks the buffers used by the current step and moves to the next.
    public mutating func step(_ ids: [Int]) {
        for id in ids { items[id].last = max(items[id].last, now) }
        now += 1
    }

    /// Assigns offsets, largest buffers first, each at the lowest offset where it overlaps no placed
    /// buffer with an intersecting lifetime (greedy by size); returns the arena's length in floats.
    /// `shared: false` gives every buffer its own memory (tests compare the two).
    public mutating func place(shared: Bool = true) -> Int {
        var total = 0
        if !shared {
            for i in items.indices { items[i].offset = total; total += items[i].floats }
            return total
        }
        let order = items.indices.sorted { (items[$0].floats, items[$1].first) > (items[$1].floats, items[$0].first) }
        var placed: [Int] = []
        for i in order {
            let it = items[i]
            let busy = placed.map { items[$0] }.filter { $0.first <= it.last && it.first <= $0.last }
                .sorted { $0.offset < $1.offset }
            var offset = 0
            for b in busy {
                if offset + it.floats <= b.offset { break }
                offset = max(offset, b.offset + b.floats)
            }
            items[i].offset = offset
            placed.append(i)
            total = max(total, offset + it.floats)
        }
        return total
    }

    /// Whether any two buffers with intersecting lifetimes share memory (tests).
    public var hasConflict: Bool {
        for i in items.indices {
            for j in items.indices where j > i {
                let a = items[i], b = items[j]
                if a.first <= b.last && b.first <= a.last && a.offset < b.offset + b.floats
                    && b.offset < a.offset + a.floats
                {
                    return true
                }
            }
        }
        return false
    }

    public init() {}
}
