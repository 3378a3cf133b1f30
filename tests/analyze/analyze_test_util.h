// A decoder whose weights are arranged so that the answer to "which layer reads the
// audio?" is known: only layer `reader` attends to audio keys, and it copies the audio's
// class into the residual stream, from which the LM head reads the class's answer token.
//
// Residual stream (width 64): dim 0 flags text tokens, dim 1 audio tokens, dims 2.. the
// audio's class (one-hot), dims 16.. the class that the reader wrote, dim 32 flags answer
// tokens. Attention scores use the lowest RoPE frequency of each head (dims 7 / 15 of 16),
// which barely rotates over a short sequence. Every layer's queries read the text flag;
// the keys of every layer read the text flag too (so audio keys score 0 against text
// keys' 16), except kv head 0 of the reader, whose keys read the audio flag: its query
// heads (0 and 1) put nearly all their mass on audio keys, and its values carry the class.
// MLPs are zero. LM head: each class token = 0.5 * text flag + class written by the
// reader, so that without the audio the class tokens tie (argmax: the lowest id, chance
// level); the end token reads the answer flag, so that an answer ends after one token.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "pal/models/ensemble.h"
#include "pal/models/llama.h"

namespace pal::test {

constexpr int64_t kTextFlag = 0, kAudioFlag = 1, kClassDim = 2, kReadDim = 16, kAnswerFlag = 32;
constexpr int64_t kArrangedWidth = 64;

struct Arrangement {
  int64_t reader = 2;                 // the only layer that reads audio
  std::vector<int64_t> class_tokens;  // the answer token of each class (ascending ids)
  int64_t end_token = -1;             // ends every answer
};

// Hidden 64, 4 heads in 2 GQA groups of head_dim 16, MLP width 16, untied LM head.
inline models::LlamaConfig arranged_config(int64_t layers, int64_t vocab) {
  models::LlamaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = kArrangedWidth;
  c.intermediate_size = 16;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  c.rms_norm_eps = 1e-5;
  return c;
}

// Writes the arrangement into `llm`'s weights (of arranged_config's shape).
inline void arrange(models::LlamaForCausalLMImpl& llm, const Arrangement& a) {
  torch::NoGradGuard no_grad;
  const auto& c = llm.config();
  const int64_t hd = c.head_dim, score_dim = hd / 2 - 1,
                groups = c.num_attention_heads / c.num_key_value_heads;
  std::map<std::string, torch::Tensor> p;
  for (auto& named : llm.named_parameters()) p[named.key()] = named.value();
  for (auto& [name, t] : p) {
    if (name.find("norm") != std::string::npos)
      t.fill_(1.0);
    else
      t.zero_();
  }
  const double alpha = 1.0, beta = 0.1, eta = 0.5, gamma = 1.0, epsilon = 3.0;
  torch::Tensor embed = p.at("model.embed_tokens.weight");
  embed.select(1, kTextFlag).fill_(1.0);
  for (int64_t t : a.class_tokens) embed[t][kAnswerFlag] = 1.0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string at = "model.layers." + std::to_string(l) + ".self_attn.";
    torch::Tensor q = p.at(at + "q_proj.weight"), k = p.at(at + "k_proj.weight");
    for (int64_t h = 0; h < c.num_attention_heads; ++h) q[h * hd + score_dim][kTextFlag] = alpha;
    for (int64_t g = 0; g < c.num_key_value_heads; ++g)
      k[g * hd + score_dim][l == a.reader && g == 0 ? kAudioFlag : kTextFlag] = alpha;
    if (l != a.reader) continue;
    torch::Tensor v = p.at(at + "v_proj.weight"), o = p.at(at + "o_proj.weight");
    for (size_t cls = 0; cls < a.class_tokens.size(); ++cls) {
      const int64_t i = static_cast<int64_t>(cls);
      v[i][kClassDim + i] = 1.0;  // kv head 0, value dim i
      for (int64_t h = 0; h < groups; ++h) o[kReadDim + i][h * hd + i] = beta;
    }
  }
  torch::Tensor head = p.at("lm_head.weight");
  for (size_t cls = 0; cls < a.class_tokens.size(); ++cls) {
    head[a.class_tokens[cls]][kTextFlag] = eta;
    head[a.class_tokens[cls]][kReadDim + static_cast<int64_t>(cls)] = gamma;
  }
  head[a.end_token][kAnswerFlag] = epsilon;
}

// Audio tokens of class `cls`: `n` tokens [1, n, 64] with the audio flag and the class.
inline torch::Tensor class_audio(int64_t cls, int64_t n) {
  torch::Tensor t = torch::zeros({1, n, kArrangedWidth});
  t.select(2, kAudioFlag).fill_(1.0);
  t.select(2, kClassDim + cls).fill_(1.0);
  return t;
}

}  // namespace pal::test
