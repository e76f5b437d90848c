// Internal: the thread-local error message behind bonsai_last_error().
#ifndef BONSAI_STATUS_H
#define BONSAI_STATUS_H

#include <string>

#include "bonsai/kernels.h"

namespace bonsai {

void set_error(std::string message);
// Records `message` and returns `status`, so entry points can `return fail(...)`.
int fail(bonsai_status status, std::string message);
void clear_error();

}  // namespace bonsai

#endif  // BONSAI_STATUS_H
