// FunctionRef: a non-owning, non-allocating reference to a callable.
//
// The tokenizer's hot loops hand every piece of text to a callback; std::function would
// allocate for capturing lambdas and costs an indirect call through a heap object, while a
// template would pull the pre-tokenizer into every header. The callable must outlive the
// FunctionRef (it is only ever used as a by-value parameter).
#pragma once

#include <type_traits>
#include <utility>

namespace dsq::tokenizer {

template <typename Signature>
class FunctionRef;

template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  FunctionRef(F&& f)  // NOLINT(google-explicit-constructor): used like a lambda parameter
      : object_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace dsq::tokenizer
