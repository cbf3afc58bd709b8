#include "runtime/backend/op_pointers.h"

#include <type_traits>

namespace ferry::runtime::ops {

namespace {

class Lister {
 public:
  Lister& operator()(const char* field, const void* p) {
    if (p) out_.push_back({field, p});
    return *this;
  }
  Lister& view(const char* data, const char* scales, const core::WeightView& w) {
    return (*this)(data, w.data)(scales, w.scales);
  }
  std::vector<OpPointer> take() { return std::move(out_); }

 private:
  std::vector<OpPointer> out_;
};

void list(Lister& l, const Embed& a) { l.view("table.data", "table.scales", a.table)("out", a.out); }
void list(Lister& l, const RmsNorm& a) { l("x", a.x)("weight", a.weight)("out", a.out); }
void list(Lister& l, const Rope& a) { l("x", a.x); }
void list(Lister& l, const HcPre& a) {
  l("H", a.H)("fn", a.fn)("scale", a.scale)("base", a.base)("mix", a.mix)("x", a.x);
}
void list(Lister& l, const HcPost& a) { l("y", a.y)("mix", a.mix)("H", a.H); }
void list(Lister& l, const HcHead& a) { l("H", a.H)("fn", a.fn)("scale", a.scale)("base", a.base)("y", a.y); }
void list(Lister& l, const Linear& a) { l.view("w.data", "w.scales", a.w)("x", a.x)("y", a.y); }
void list(Lister& l, const LinearGrouped& a) {
  for (int64_t g = 0; a.w && g < a.groups; ++g) l.view("w[g].data", "w[g].scales", a.w[g]);
  l("x", a.x)("y", a.y);
}
void list(Lister& l, const ExpertFfn& a) {
  l.view("w1.data", "w1.scales", a.w1).view("w2.data", "w2.scales", a.w2).view("w3.data", "w3.scales", a.w3);
  l("x", a.x)("gate", a.gate)("up", a.up)("out", a.out);
}
void list(Lister& l, const KvEncode& a) { l("x", a.x)("out", a.out); }
void list(Lister& l, const KvWindowStore& a) { l("rows", a.rows)("ring", a.ring); }
void list(Lister& l, const Compress& a) {
  l("a", a.a)("s", a.s)("ape", a.ape)("norm", a.norm)("state_kv", a.state_kv)("state_score", a.state_score);
  l("rows", a.rows);
}
void list(Lister& l, const IndexerSelect& a) {
  l("q", a.q)("w", a.w)("keys", a.keys)("key_tile", a.key_tile)("tiles", a.tiles.data)("sel", a.sel);
  l("sel_count", a.sel_count);
}
void list(Lister& l, const Attention& a) {
  l("q", a.q)("kv", a.kv)("window", a.window)("compressed", a.compressed)("sel", a.sel)("sel_count", a.sel_count);
  l("sink", a.sink)("tiles", a.tiles.data)("o", a.o);
}
void list(Lister& l, const Route& a) {
  l("scores", a.scores)("bias", a.bias)("tid2eid", a.tid2eid)("ids", a.ids)("weights", a.weights);
}
void list(Lister& l, const GatherRows& a) { l("src", a.src)("index", a.index)("dst", a.dst); }
void list(Lister& l, const MoeCombine& a) {
  l("expert_out", a.expert_out)("order", a.order)("weights", a.weights)("y", a.y);
}
void list(Lister& l, const AddStreams& a) { l("a", a.a)("b", a.b)("out", a.out); }

}  // namespace

std::vector<OpPointer> device_pointers(const Op& op) {
  Lister l;
  std::visit([&](const auto& a) { list(l, a); }, op);
  return l.take();
}

}  // namespace ferry::runtime::ops
