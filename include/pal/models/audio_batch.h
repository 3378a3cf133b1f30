// Batching the audio tokens of single clips (encoded one at a time) for one decoder call.
#pragma once

#include <vector>

#include "pal/models/ensemble.h"

namespace pal::models {

// The clips' tokens of one route, each [1, N_i, width] with mask [1, N_i], as one batch
// [clips, max N_i, width]: padded to the longest, the padding masked out.
AudioTokens stack_audio_tokens(const std::vector<const AudioTokens*>& clips);

}  // namespace pal::models
