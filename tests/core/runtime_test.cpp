#include "pal/core/runtime.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

#if defined(__SANITIZE_ADDRESS__)
#define PAL_MALLOC_REPLACED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PAL_MALLOC_REPLACED 1
#endif
#endif

// After configure_cpu_allocator(), 1 MiB blocks come from the heap, and 200 MiB of them
// freed together stay in the process as free heap memory. glibc's defaults serve such
// blocks with mmap (threshold 128 KiB until it adapts) or trim the heap top above at most
// 64 MiB: a standalone program with the defaults keeps none of the 200 MiB.
TEST(CpuAllocator, FreedBlocksStayInTheHeap) {
#if !defined(__GLIBC__) || defined(PAL_MALLOC_REPLACED)
  GTEST_SKIP() << "needs glibc's own malloc (not replaced by a sanitizer)";
#else
  if (pal::malloc_left_to_environment()) GTEST_SKIP() << "the environment sets malloc: PAL leaves it alone";
  pal::configure_cpu_allocator();
  constexpr size_t kBlock = size_t{1} << 20, kBlocks = 200;
  const size_t mapped_before = mallinfo2().hblks;
  std::vector<char*> blocks;
  for (size_t i = 0; i < kBlocks; ++i) {
    blocks.push_back(static_cast<char*>(std::malloc(kBlock)));
    ASSERT_NE(blocks.back(), nullptr);
    blocks.back()[0] = 1;
  }
  EXPECT_EQ(mallinfo2().hblks, mapped_before) << "1 MiB blocks were served by mmap, not the heap";
  for (char* b : blocks) std::free(b);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_GE(after.fordblks, kBlocks * kBlock) << "freed heap memory was returned to the kernel";
#endif
}

}  // namespace
