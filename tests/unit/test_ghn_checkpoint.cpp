// GHN checkpoints: round trip, exact resume through a file, and clear errors for corrupted or
// mismatched checkpoints.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "ghnq/ghn/checkpoint.hpp"
#include "support/temp_dir.hpp"

using namespace ghnq;

namespace {

using cfg = ghn2_config<backend::cpu_t, float, 8, 10>;

data::dataset tiny_dataset() {
  data::dataset d;
  d.name = "tiny";
  d.images = tensor<std::uint8_t>({32, 1, 12, 12});
  rng g(4);
  for (std::int64_t i = 0; i < d.images.numel(); ++i) d.images.data()[i] = static_cast<std::uint8_t>(g.below(256));
  for (int i = 0; i < 32; ++i) d.labels.push_back(static_cast<std::int32_t>(g.below(10)));
  return d;
}

ghn::train_options tiny_options() {
  ghn::train_options o;
  o.steps = 6;
  o.meta_batch = 2;
  o.batch_size = 8;
  o.sample_widths = false;
  o.space.max_params = 60000;
  o.schedule = ghn::schedule_kind::cosine;
  o.seed = 3;
  return o;
}

template <class C>
std::vector<std::vector<float>> values(const hypernet<C>& h) {
  std::vector<std::vector<float>> out;
  for (const auto& p : h.parameters()) out.push_back(p.value().to_vector());
  return out;
}

using ghnq::test::temp_dir;

}  // namespace

TEST_CASE("ghn checkpoint: parameter names are unique, round trip restores every value", "[ghn][checkpoint]") {
  temp_dir dir;
  rng g(1);
  hypernet<cfg> a(g);
  std::set<std::string> names;
  for (const auto& p : a.parameters()) CHECK(names.insert(p.name()).second);
  ghn::save_checkpoint(dir.file("a.safetensors"), a);
  rng g2(2);
  hypernet<cfg> b(g2);
  CHECK(values(a) != values(b));
  const auto info = ghn::load_checkpoint(dir.file("a.safetensors"), b);
  CHECK(values(a) == values(b));
  CHECK(!info.resumable);
  CHECK(info.config.at("hidden") == 8);
  CHECK(info.config.at("gnn") == "gated_gnn");
  // A plain checkpoint cannot resume a trainer.
  const auto ds = tiny_dataset();
  ghn::trainer<cfg> tr(b, ds, tiny_options());
  CHECK_THROWS_AS(ghn::load_checkpoint(dir.file("a.safetensors"), b, &tr), io_error);
}

TEST_CASE("ghn checkpoint: resuming from a file takes exactly the uninterrupted run's next steps", "[ghn][checkpoint]") {
  temp_dir dir;
  const auto ds = tiny_dataset();
  const auto o = tiny_options();
  rng g1(7);
  hypernet<cfg> full(g1);
  ghn::trainer<cfg> t1(full, ds, o);
  std::vector<double> losses;
  for (int i = 0; i < 4; ++i) losses.push_back(t1.step().loss);

  rng g2(7);
  hypernet<cfg> part(g2);
  ghn::trainer<cfg> t2(part, ds, o);
  for (int i = 0; i < 2; ++i) t2.step();
  ghn::save_checkpoint(dir.file("run.safetensors"), part, &t2);

  rng g3(123);
  hypernet<cfg> resumed(g3);
  ghn::trainer<cfg> t3(resumed, ds, o);
  const auto info = ghn::load_checkpoint(dir.file("run.safetensors"), resumed, &t3);
  CHECK(info.resumable);
  CHECK(info.step == 2);
  CHECK(t3.step_count() == 2);
  CHECK(t3.step().loss == losses[2]);
  CHECK(t3.step().loss == losses[3]);
  CHECK(values(resumed) == values(full));
  CHECK(ghn::read_checkpoint_info(dir.file("run.safetensors")).options.seed == o.seed);

  // Different training options: a clear error, nothing modified.
  auto o2 = o;
  o2.lr = 5e-4;
  rng g4(9);
  hypernet<cfg> other(g4);
  const auto before = values(other);
  ghn::trainer<cfg> t4(other, ds, o2);
  CHECK_THROWS_WITH(ghn::load_checkpoint(dir.file("run.safetensors"), other, &t4), Catch::Contains("'lr'"));
  CHECK(values(other) == before);
  CHECK(t4.step_count() == 0);
}

TEST_CASE("ghn checkpoint: mismatched and corrupted checkpoints are clear errors", "[ghn][checkpoint]") {
  temp_dir dir;
  rng g(1);
  hypernet<cfg> a(g);
  const auto path = dir.file("a.safetensors");
  ghn::save_checkpoint(path, a);
  // Another hidden size.
  {
    rng g2(1);
    hypernet<ghn2_config<backend::cpu_t, float, 12, 10>> b(g2);
    CHECK_THROWS_WITH(ghn::load_checkpoint(path, b), Catch::Contains("'hidden'") && Catch::Contains(path));
  }
  // Another class count / scalar type.
  {
    rng g2(1);
    hypernet<ghn2_config<backend::cpu_t, float, 8, 5>> b(g2);
    CHECK_THROWS_WITH(ghn::load_checkpoint(path, b), Catch::Contains("'num_classes'"));
    hypernet<ghn2_config<backend::cpu_t, double, 8, 10>> c(g2);
    CHECK_THROWS_WITH(ghn::load_checkpoint(path, c), Catch::Contains("'scalar'"));
  }
  // Truncated file, garbage, and a safetensors file that is not a checkpoint.
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 1000);
  for (std::size_t cut : {std::size_t(3), std::size_t(100), bytes.size() / 2, bytes.size() - 1}) {
    const auto p = dir.file("cut.safetensors");
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut));
    rng g2(1);
    hypernet<cfg> b(g2);
    const auto before = values(b);
    CHECK_THROWS_AS(ghn::load_checkpoint(p, b), io_error);
    CHECK(values(b) == before);
  }
  {
    io::safetensors_writer w;
    w.add("x", tensor<float>::zeros({2}));
    w.save(dir.file("plain.safetensors"));
    rng g2(1);
    hypernet<cfg> b(g2);
    CHECK_THROWS_WITH(ghn::load_checkpoint(dir.file("plain.safetensors"), b), Catch::Contains("not a ghnq GHN checkpoint"));
  }
  // A tensor with the wrong shape, and a missing tensor.
  {
    const auto f = io::safetensors_file::load(path);
    io::safetensors_writer w;
    for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
    bool first = true;
    for (const auto& n : f.names()) {
      if (first) {  // drop the first tensor
        first = false;
        continue;
      }
      w.add(f.record(n));
    }
    w.save(dir.file("missing.safetensors"));
    rng g2(1);
    hypernet<cfg> b(g2);
    CHECK_THROWS_WITH(ghn::load_checkpoint(dir.file("missing.safetensors"), b), Catch::Contains("missing tensor"));

    io::safetensors_writer w2;
    for (const auto& [k, v] : f.metadata()) w2.set_metadata(k, v);
    for (const auto& n : f.names()) {
      if (n == "ghn.ln.weight") w2.add(n, tensor<float>::zeros({3}));
      else w2.add(f.record(n));
    }
    w2.save(dir.file("shape.safetensors"));
    CHECK_THROWS_AS(ghn::load_checkpoint(dir.file("shape.safetensors"), b), shape_error);
  }
  CHECK_THROWS_AS(ghn::load_checkpoint(dir.file("nonexistent.safetensors"), a), io_error);
}
