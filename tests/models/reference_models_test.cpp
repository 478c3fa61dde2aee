#include "batchcam/cam/grad_cam.h"
#include "batchcam/data/shapes.h"
#include "batchcam/io/file.h"
#include "batchcam/io/png.h"
#include "batchcam/models/convnext_v2.h"
#include "batchcam/models/registry.h"
#include "batchcam/models/resnet.h"
#include "batchcam/train/checkpoint.h"

#include "support/process.h"
#include "support/tensor_asserts.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace batchcam;

namespace {
int64_t count(models::CamModel& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}
models::CamModelPtr build(const std::string& name, int64_t c, int64_t k, int64_t size) {
  return models::make_model({name, c, k, size, ""});
}
}  // namespace

TEST(ReferenceModels, ParameterCountsEqualThePublishedOnes) {
  // 3 channels, 1000 classes, reference stems. torchvision resnet18: 11,689,512.
  // ConvNeXt-V2 (Woo et al. 2023, Table of models): atto 3.7M, femto 5.2M, pico 9.1M,
  // nano 15.6M, tiny 28.6M; the exact values below follow from the architecture.
  EXPECT_EQ(count(*build("resnet18", 3, 1000, 224)), 11689512);
  EXPECT_EQ(count(*build("convnext-v2-atto", 3, 1000, 224)), 3708400);
  EXPECT_EQ(count(*build("convnext-v2-femto", 3, 1000, 224)), 5233240);
  EXPECT_EQ(count(*build("convnext-v2-pico", 3, 1000, 224)), 9066280);
  EXPECT_EQ(count(*build("convnext-v2-nano", 3, 1000, 224)), 15623800);
  EXPECT_EQ(count(*build("convnext-v2-tiny", 3, 1000, 224)), 28635496);
}

TEST(ReferenceModels, ResNetNamesAreTorchvisions) {
  auto model = build("resnet18", 3, 1000, 224);
  std::set<std::string> names;
  for (const auto& p : model->named_parameters()) names.insert(p.key());
  for (const auto& b : model->named_buffers()) names.insert(b.key());
  std::set<std::string> expected;
  const auto bn = [&](const std::string& prefix) {
    for (const char* s : {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}) expected.insert(prefix + "." + s);
  };
  expected.insert("conv1.weight");
  bn("bn1");
  for (int layer = 1; layer <= 4; ++layer) {
    for (int block = 0; block < 2; ++block) {
      const auto p = "layer" + std::to_string(layer) + "." + std::to_string(block);
      expected.insert(p + ".conv1.weight");
      expected.insert(p + ".conv2.weight");
      bn(p + ".bn1");
      bn(p + ".bn2");
      if (layer > 1 && block == 0) {
        expected.insert(p + ".downsample.0.weight");
        bn(p + ".downsample.1");
      }
    }
  }
  expected.insert("fc.weight");
  expected.insert("fc.bias");
  EXPECT_EQ(names, expected);
}

TEST(ReferenceModels, ConvNeXtNamesFollowTheReference) {
  auto model = build("convnext-v2-atto", 3, 1000, 224);
  const auto params = model->named_parameters();
  for (const char* key : {"downsample_layers.0.0.weight", "downsample_layers.0.1.weight", "downsample_layers.3.1.bias",
                          "stages.0.0.dwconv.weight", "stages.2.5.grn.gamma", "stages.3.1.pwconv2.weight",
                          "stages.1.0.norm.weight", "norm.weight", "head.weight", "head.bias"}) {
    EXPECT_NE(params.find(key), nullptr) << key;
  }
  EXPECT_EQ(params["stages.2.5.grn.gamma"].sizes(), (std::vector<int64_t>{1, 1, 1, 640}));
}

TEST(ReferenceModels, OutputShapesForSmallInputsInTrainAndEvalMode) {
  for (const auto& name : models::model_names()) {
    for (auto [c, s] : {std::pair<int64_t, int64_t>{1, 28}, {3, 32}}) {
      auto model = build(name, c, 10, s);
      const auto x = torch::randn({2, c, s, s});
      for (bool training : {true, false}) {
        model->train(training);
        EXPECT_EQ(model->forward(x).sizes(), (std::vector<int64_t>{2, 10})) << name << " " << s;
      }
    }
  }
}

TEST(ReferenceModels, DefaultTargetLayersKeepUsefulMapsAt28Pixels) {
  const auto x = torch::randn({2, 1, 28, 28});
  EXPECT_EQ(build("convnext-v2-atto", 1, 10, 28)->features(x).sizes(), (std::vector<int64_t>{2, 160, 7, 7}));
  EXPECT_EQ(build("resnet18", 1, 10, 28)->features(x).sizes(), (std::vector<int64_t>{2, 512, 4, 4}));
  // Reference stems at 224 px: the last stage, 7x7.
  const auto big = torch::randn({1, 3, 224, 224});
  EXPECT_EQ(build("resnet18", 3, 10, 224)->features(big).sizes(), (std::vector<int64_t>{1, 512, 7, 7}));
  EXPECT_EQ(build("convnext-v2-atto", 3, 10, 224)->features(big).sizes(), (std::vector<int64_t>{1, 320, 7, 7}));
}

TEST(ReferenceModels, ForwardAndBackwardReachEveryParameter) {
  for (const auto& name : {"resnet18", "convnext-v2-atto"}) {
    auto model = build(name, 1, 10, 28);
    model->train();
    model->forward(torch::randn({4, 1, 28, 28})).logsumexp(1).sum().backward();
    for (const auto& p : model->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << name << " " << p.key();
      // GRN gamma and beta start at zero, so the MLP before them gets no gradient at
      // step 0 in the reference as well; every parameter still gets a defined gradient.
    }
  }
}

TEST(ReferenceModels, ConvNeXtLayerNormIsPerSampleSoAnyTargetLayerWorksInTraining) {
  auto model = build("convnext-v2-atto", 1, 10, 28);
  model->train();
  model->set_target_layer("stages.0");
  EXPECT_EQ(model->head_sample_mixing_module(), "");
  auto resnet = build("resnet18", 1, 10, 28);
  resnet->train();
  resnet->set_target_layer("layer3");
  EXPECT_EQ(resnet->head_sample_mixing_module(), "layer4.0.bn1");
}

// Needs Debian's python3-torch and python3-torchvision; skipped otherwise.
TEST(ReferenceModels, ExportedResNetLoadsIntoTorchvisionWithTheSameLogits) {
  const char* python = "/usr/bin/python3";
  if (std::system((std::string(python) + " -c 'import torch, torchvision' > /dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "python3-torch and python3-torchvision are not installed";
  }
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-tv-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  torch::manual_seed(0);
  for (auto [size, small] : {std::pair<int64_t, bool>{28, true}, {96, false}}) {
    auto model = build("resnet18", 1, 10, size);
    {
      torch::NoGradGuard no_grad;
      model->forward(torch::randn({8, 1, size, size}));  // non-trivial BatchNorm statistics
    }
    model->eval();
    const auto x = torch::randn({4, 1, size, size});
    const auto logits = model->forward(x).detach();
    const auto weights = (dir / "weights.pt").string();
    train::export_state_dict(*model, weights);
    c10::Dict<std::string, torch::Tensor> io;
    io.insert("x", x);
    io.insert("logits", logits);
    const auto bytes = torch::pickle_save(c10::IValue(io));
    io::write_file_atomic((dir / "io.pt").string(), std::string(bytes.begin(), bytes.end()));
    const auto cmd = std::string(python) + " " + BATCHCAM_SOURCE_DIR + "/tests/models/torchvision_check.py " +
                     weights + " " + (dir / "io.pt").string() + (small ? " small" : " standard") + " 2>&1";
    FILE* pipe = ::popen(cmd.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string out;
    char buf[512];
    while (std::fgets(buf, sizeof buf, pipe)) out += buf;
    EXPECT_EQ(::pclose(pipe), 0) << out;
    EXPECT_NE(out.find("max abs difference"), std::string::npos) << out;
  }
  std::filesystem::remove_all(dir);
}

// --init-weights: a state dict saved by Python (torchvision's resnet18) starts a built-in
// model. Needs Debian's python3-torch and python3-torchvision; skipped otherwise.
TEST(ReferenceModels, TorchvisionWeightsSavedByPythonLoadWithTheSameLogits) {
  const std::string python = "/usr/bin/python3";
  if (std::system((python + " -c 'import torch, torchvision' > /dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "python3-torch and python3-torchvision are not installed";
  }
  const auto dir = std::filesystem::temp_directory_path() / ("batchcam-init-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto weights = (dir / "weights.pt").string(), io_path = (dir / "io.pt").string();
  const auto save = [&](int classes, const std::string& how = "") {
    const auto cmd = python + " " + BATCHCAM_SOURCE_DIR + "/tests/models/torchvision_weights.py " + weights + " " +
                     io_path + " " + std::to_string(classes) + " 96 " + how;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  };
  // model.state_dict() itself is an OrderedDict with metadata, which LibTorch 1.13's reader
  // refuses: then the error says how to save it.
  save(10, "ordered");
  auto ordered = build("resnet18", 3, 10, 96);
  try {
    (void)train::load_initial_weights(*ordered, weights);
    // A LibTorch that reads it (2.x) must load the same weights as from the plain dict below.
    EXPECT_EQ(ordered->named_parameters()["fc.bias"].numel(), 10);
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("torch.save(dict(model.state_dict()), FILE)"), std::string::npos) << e.what();
    ordered.reset();
  }
  save(10);
  // 3 channels, the reference stem (above 64 px): the same logits as torchvision's.
  auto model = build("resnet18", 3, 10, 96);
  EXPECT_TRUE(train::load_initial_weights(*model, weights).empty()) << "nothing to adapt";
  std::ifstream in(io_path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto io = torch::pickle_load(bytes).toGenericDict();
  model->eval();
  torch::NoGradGuard no_grad;
  const auto logits = model->forward(io.at("x").toTensor());
  EXPECT_LT((logits - io.at("logits").toTensor()).abs().max().item<double>(), 1e-4);
  if (ordered) {
    ordered->eval();
    EXPECT_TRUE(torch::equal(ordered->forward(io.at("x").toTensor()), logits)) << "the OrderedDict gave other weights";
  }

  // Another class count and one channel: the classifier keeps its initialisation, conv1 sums RGB.
  save(1000);
  auto gray = build("resnet18", 1, 7, 96);
  const auto fc_before = gray->named_parameters()["fc.weight"].clone();
  const auto notes = train::load_initial_weights(*gray, weights);
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_NE(notes[0].find("conv1.weight: the RGB weights [64, 3, 7, 7] summed"), std::string::npos) << notes[0];
  EXPECT_NE(notes[1].find("fc.weight, fc.bias: kept their initialisation (the file's classifier has 1000 classes"),
            std::string::npos)
      << notes[1];
  EXPECT_TRUE(torch::equal(gray->named_parameters()["fc.weight"], fc_before));
  c10::Dict<std::string, torch::Tensor> saved;
  for (const auto& item : torch::pickle_load([&] {
         std::ifstream w(weights, std::ios::binary);
         return std::vector<char>((std::istreambuf_iterator<char>(w)), std::istreambuf_iterator<char>());
       }()).toGenericDict()) {
    saved.insert(item.key().toStringRef(), item.value().toTensor());
  }
  EXPECT_TRUE(torch::allclose(gray->named_parameters()["conv1.weight"], saved.at("conv1.weight").sum(1, true)));

  // Strict: a model of other shapes gets one error listing what does not fit.
  auto small_stem = build("resnet18", 3, 10, 28);  // 3x3 conv1, no max-pool
  try {
    (void)train::load_initial_weights(*small_stem, weights);
    FAIL() << "a 7x7 conv1 must not load into a 3x3 one";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("mis-shaped conv1.weight [64, 3, 7, 7] (the model has [64, 3, 3, 3])"),
              std::string::npos)
        << e.what();
  }
  auto convnext = build("convnext-v2-atto", 3, 10, 96);
  try {
    (void)train::load_initial_weights(*convnext, weights);
    FAIL() << "resnet weights must not load into a ConvNeXt";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("missing "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("unexpected "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(" more"), std::string::npos) << "long lists are shortened: " << e.what();
  }
  std::filesystem::remove_all(dir);
}

// The README's Python snippet for an exported ResNet-18, run as written: it must predict
// what batchcam predicts for the same image. Needs Debian's python3-torch and
// python3-torchvision; skipped otherwise.
TEST(ReferenceModels, TheReadmeSnippetReproducesBatchcamsPredictionFromTheExportedFiles) {
  const std::string python = "/usr/bin/python3";
  if (std::system((python + " -c 'import torch, torchvision' > /dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "python3-torch and python3-torchvision are not installed";
  }
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / ("batchcam-snippet-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto cli = [&](const std::string& args) { return test_support::run_shell(std::string(BATCHCAM_CLI) + " " + args); };
  const auto trained = cli("train --quiet --no-report --model resnet18 --train-size 128 --test-size 32 --batch-size 32 "
                           "--epochs 1 --out-dir " + dir.string() + " --run-name r");
  ASSERT_EQ(trained.code, 0) << trained.out;
  const auto exported = cli("export " + (dir / "r").string() + " " + (dir / "weights.pt").string());
  ASSERT_EQ(exported.code, 0) << exported.out;
  const auto meta = nlohmann::json::parse(test_support::read_text((dir / "weights.json").string()));
  EXPECT_EQ(meta.at("class_names").at(1).get<std::string>(), "ring");
  EXPECT_TRUE(meta.at("small_input_stem").get<bool>());
  // A test image of the run's size, and what batchcam predicts for it.
  const auto image = data::generate_shapes(1, 28, 99, data::SpuriousCue::none, 0.05).images[0][0];
  io::write_png((dir / "image.png").string(), image);
  const auto explained = cli("explain " + (dir / "r").string() + " --images " + (dir / "image.png").string() +
                             " --out " + (dir / "x").string());
  ASSERT_EQ(explained.code, 0) << explained.out;
  std::istringstream csv(test_support::read_text((dir / "x" / "cam_stats.csv").string()));
  std::string header, row;
  std::getline(csv, header);
  std::getline(csv, row);
  std::vector<std::string> fields;
  std::istringstream cells(row);
  for (std::string cell; std::getline(cells, cell, ',');) fields.push_back(cell);
  ASSERT_GE(fields.size(), 6u) << row;
  const auto predicted = fields[3];  // index,source,label,predicted,target,target_probability,...
  const double probability = std::stod(fields[5]);
  // The snippet, cut from the README, run where weights.pt, weights.json and image.png are.
  const auto readme = test_support::read_text(std::string(BATCHCAM_SOURCE_DIR) + "/README.md");
  const auto marker = readme.find("<!-- export-snippet -->");
  ASSERT_NE(marker, std::string::npos);
  const auto start = readme.find("```python\n", marker) + 10;
  const auto end = readme.find("```", start);
  std::ofstream(dir / "snippet.py") << readme.substr(start, end - start);
  const auto ran = test_support::run_shell("cd " + dir.string() + " && " + python + " snippet.py");
  ASSERT_EQ(ran.code, 0) << ran.out;
  std::istringstream printed(ran.out);
  std::string python_class;
  double python_probability = 0;
  printed >> python_class >> python_probability;
  EXPECT_EQ(python_class, predicted) << ran.out;
  EXPECT_NEAR(python_probability, probability, 1e-4) << ran.out;
  fs::remove_all(dir);
}
