#include "pal/models/generation.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pal/core/error.h"
#include "pal/io/safetensors.h"
#include "test_util.h"

namespace pal::models {
namespace {

std::filesystem::path llm_fixture(const std::string& name) {
  return test::fixtures() / "llm" / name;
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// transformers' generate(do_sample=False, max_new_tokens=32): same ids, for one prompt
// and for a left-padded batch of three prompts of different lengths.
void expect_greedy_parity(const std::string& name) {
  SCOPED_TRACE(name);
  LlamaForCausalLM model = load_llama(llm_fixture(name));
  auto expected = io::SafetensorsFile::open(llm_fixture(name + "_expected.safetensors"));
  GenerationOptions options;
  options.max_new_tokens = 32;
  GenerationResult single = generate(model, {to_vector(expected.tensor("generate.prompt"))}, options);
  EXPECT_EQ(single.tokens.at(0), to_vector(expected.tensor("generate.single")));
  EXPECT_EQ(single.finish_reasons.at(0), FinishReason::length);
  EXPECT_EQ(single.steps, 31);

  torch::Tensor ids = expected.tensor("generate.batch_ids"), mask = expected.tensor("generate.batch_mask");
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < ids.size(0); ++i)
    prompts.push_back(to_vector(ids[i].masked_select(mask[i].to(torch::kBool))));
  GenerationResult batch = generate(model, prompts, options);
  torch::Tensor reference = expected.tensor("generate.batch");
  ASSERT_EQ(batch.tokens.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(batch.tokens[i], to_vector(reference[static_cast<int64_t>(i)])) << "prompt " << i;
}

TEST(ParityGeneration, LlamaGreedyMatchesTransformersGenerate) {
  expect_greedy_parity("tiny_llama");
}
TEST(ParityGeneration, Qwen2GreedyMatchesTransformersGenerate) {
  expect_greedy_parity("tiny_qwen2");
}

// The cached path (prefill, then one position at a time) gives the logits of a full forward.
TEST(Generation, CachedStepsEqualFullForward) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_qwen2"));
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::randint(0, 96, {2, 20}, torch::kInt64);
  torch::Tensor full = model->forward(ids).logits;
  KVCache cache(model->config(), 2, 20, torch::kFloat32);
  auto positions = [](int64_t from, int64_t to) {
    return torch::arange(from, to).unsqueeze(0).expand({2, to - from});
  };
  auto valid = [](int64_t n) { return torch::ones({2, n}, torch::kBool); };
  torch::Tensor h =
      model->forward_cached(model->embed(ids.narrow(1, 0, 8)), positions(0, 8), valid(8), cache);
  EXPECT_EQ(cache.length(), 8);
  EXPECT_TRUE(torch::allclose(model->logits(h), full.narrow(1, 0, 8), 1e-4, 1e-4));
  for (int64_t t = 8; t < 20; ++t) {
    h = model->forward_cached(model->embed(ids.narrow(1, t, 1)), positions(t, t + 1), valid(1), cache);
    EXPECT_TRUE(torch::allclose(model->logits(h).squeeze(1), full.select(1, t), 1e-4, 1e-4))
        << "position " << t;
  }
  EXPECT_EQ(cache.length(), 20);
  std::string msg = test::error_message<GenerationError>(
      [&] { model->forward_cached(model->embed(ids.narrow(1, 0, 1)), positions(20, 21), valid(1), cache); });
  EXPECT_NE(msg.find("exceed its capacity of 20"), std::string::npos) << msg;
}

// A padded row gives the same tokens as the same prompt alone.
TEST(Generation, PaddingDoesNotChangeAPromptsTokens) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_llama"));
  GenerationOptions options;
  options.max_new_tokens = 12;
  std::vector<int64_t> shorter = {5, 6, 7}, longer = {9, 8, 7, 6, 5, 4, 3, 2, 1, 9};
  auto alone = generate(model, {shorter}, options).tokens[0];
  auto together = generate(model, {longer, shorter}, options);
  EXPECT_EQ(together.tokens[1], alone);
  EXPECT_EQ(together.tokens[0], generate(model, {longer}, options).tokens[0]);
}

TEST(Generation, SamplingIsReproducibleAndFollowsTheOptions) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_llama"));
  std::vector<std::vector<int64_t>> prompts = {{5, 6, 7, 8}, {10, 11}};
  GenerationOptions greedy;
  greedy.max_new_tokens = 16;
  GenerationOptions sampled = greedy;
  sampled.sample = true;
  sampled.temperature = 1.5;
  sampled.seed = 42;
  auto a = generate(model, prompts, sampled), b = generate(model, prompts, sampled);
  EXPECT_EQ(a.tokens, b.tokens);  // same seed, same tokens
  sampled.seed = 43;
  EXPECT_NE(generate(model, prompts, sampled).tokens, a.tokens);
  // top_k = 1 and a tiny top_p leave only the best token: greedy.
  auto best = generate(model, prompts, greedy).tokens;
  sampled.top_k = 1;
  EXPECT_EQ(generate(model, prompts, sampled).tokens, best);
  sampled.top_k = 0;
  sampled.top_p = 1e-6;
  EXPECT_EQ(generate(model, prompts, sampled).tokens, best);
  // At a high temperature over 96 tokens, 32 samples repeat few tokens; greedy loops.
  sampled.top_p = 1.0;
  sampled.temperature = 50.0;
  sampled.max_new_tokens = 32;
  auto hot = generate(model, {{5}}, sampled).tokens[0];
  EXPECT_GT(std::set<int64_t>(hot.begin(), hot.end()).size(), 16u);
}

TEST(Generation, ProcessLogitsMatchesTransformersDefinitions) {
  torch::Tensor logits = torch::tensor({{2.0, -1.0, 0.5, 1.0}});
  torch::Tensor seen = torch::tensor({{true, true, false, false}});
  GenerationOptions o;
  o.repetition_penalty = 2.0;
  // Seen: positive logits divided, negative ones multiplied.
  EXPECT_TRUE(torch::allclose(process_logits(logits, seen, o), torch::tensor({{1.0, -2.0, 0.5, 1.0}})));
  o = GenerationOptions{};
  o.sample = true;
  o.top_k = 2;
  torch::Tensor kept = process_logits(logits, {}, o).isfinite();
  EXPECT_TRUE(torch::equal(kept, torch::tensor({{true, false, false, true}})));
  // top_p: probabilities of [2, -1, 0.5, 1] are ~[.61, .03, .14, .22]; 0.7 needs the two best.
  o.top_k = 0;
  o.top_p = 0.7;
  kept = process_logits(logits, {}, o).isfinite();
  EXPECT_TRUE(torch::equal(kept, torch::tensor({{true, false, false, true}})));
  o.top_p = 0.9;  // .61 + .22 = .83 < .9: the third joins
  kept = process_logits(logits, {}, o).isfinite();
  EXPECT_TRUE(torch::equal(kept, torch::tensor({{true, false, true, true}})));
  o.top_p = 1.0;
  o.temperature = 0.5;
  EXPECT_TRUE(torch::allclose(process_logits(logits, {}, o), logits * 2));
}

TEST(Generation, RepetitionPenaltyChangesGreedyText) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_qwen2"));
  GenerationOptions o;
  o.max_new_tokens = 24;
  auto plain = generate(model, {{36, 23}}, o).tokens[0];
  o.repetition_penalty = 5.0;
  auto penalised = generate(model, {{36, 23}}, o).tokens[0];
  EXPECT_NE(plain, penalised);
  EXPECT_GT(std::set<int64_t>(penalised.begin(), penalised.end()).size(),
            std::set<int64_t>(plain.begin(), plain.end()).size());
}

TEST(Generation, StopTokensStringsAndCallback) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_llama"));
  GenerationOptions o;
  o.max_new_tokens = 32;
  std::vector<int64_t> prompt = {5, 6, 7, 8};
  auto free_run = generate(model, {prompt}, o).tokens[0];
  ASSERT_EQ(free_run.size(), 32u);

  o.stop_token_ids = {free_run[5]};
  auto stopped = generate(model, {prompt, {10, 11, 12}}, o);
  size_t first = std::find(free_run.begin(), free_run.end(), free_run[5]) - free_run.begin();
  EXPECT_EQ(stopped.tokens[0], std::vector<int64_t>(free_run.begin(), free_run.begin() + first + 1));
  EXPECT_EQ(stopped.finish_reasons[0], FinishReason::stop_token);

  // Stop strings see decoded text: here each id decodes to "<id>".
  Detokenizer detok = [](const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t id : ids) s += "<" + std::to_string(id) + ">";
    return s;
  };
  o.stop_token_ids.clear();
  o.stop_strings = {"<" + std::to_string(free_run[3]) + "><" + std::to_string(free_run[4]) + ">"};
  auto by_string = generate(model, {prompt}, o, {}, detok);
  EXPECT_EQ(by_string.finish_reasons[0], FinishReason::stop_string);
  EXPECT_EQ(by_string.tokens[0], std::vector<int64_t>(free_run.begin(), free_run.begin() + 5));
  EXPECT_THROW(generate(model, {prompt}, o), GenerationError);  // stop strings need a detokenizer

  // Streaming: every token arrives once, in order; false cancels.
  o.stop_strings.clear();
  std::vector<int64_t> streamed;
  auto cancelled = generate(model, {prompt}, o, [&](size_t row, int64_t token) {
    streamed.push_back(token);
    return streamed.size() < 7;
  });
  EXPECT_EQ(streamed, std::vector<int64_t>(free_run.begin(), free_run.begin() + 7));
  EXPECT_EQ(cancelled.tokens[0], streamed);
  EXPECT_EQ(cancelled.finish_reasons[0], FinishReason::cancelled);
}

TEST(Generation, ContextLimitsAndBadRequests) {
  LlamaForCausalLM model = load_llama(llm_fixture("tiny_llama"));  // max_position_embeddings 256
  GenerationOptions o;
  o.max_new_tokens = 100;
  // 250 prompt tokens leave room for 6 new ones.
  auto near_full = generate(model, {std::vector<int64_t>(250, 7)}, o);
  EXPECT_EQ(near_full.tokens[0].size(), 6u);
  EXPECT_EQ(near_full.finish_reasons[0], FinishReason::length);
  std::string msg =
      test::error_message<GenerationError>([&] { generate(model, {std::vector<int64_t>(256, 7)}, o); });
  EXPECT_NE(msg.find("prompt 0 has 256 tokens; the model's context (max_position_embeddings) is 256"),
            std::string::npos)
      << msg;
  msg = test::error_message<GenerationError>([&] { generate(model, {{1, 2}, {}}, o); });
  EXPECT_NE(msg.find("prompt 1 is empty"), std::string::npos) << msg;
  msg = test::error_message<GenerationError>([&] { generate(model, {{1, 96}}, o); });
  EXPECT_NE(msg.find("token id 96 outside the vocabulary [0, 96)"), std::string::npos) << msg;
  o.top_p = 0;
  msg = test::error_message<GenerationError>([&] { generate(model, {{1}}, o); });
  EXPECT_NE(msg.find("top_p: must be in (0, 1], got 0"), std::string::npos) << msg;
  o = GenerationOptions{};
  o.temperature = -1;
  msg = test::error_message<GenerationError>([&] { generate(model, {{1}}, o); });
  EXPECT_NE(msg.find("temperature"), std::string::npos) << msg;
}

}  // namespace
}  // namespace pal::models
